"""`migrate finetune`: adapt the embedding model to the company's own pairs (pairs.py: the files;
corpus.py: pairs and negatives from the index; negatives.py: mining; train.py: the trainer;
compare.py: before and after; command.py: the command)."""

from importlib.util import find_spec

from workers.core.errors import ConfigError


def require_train_extra(lora: bool) -> None:
    """The packages training needs, named with the extra that installs them: checked before any
    of them is imported."""
    needed = ("sentence_transformers", "datasets", "accelerate") + (("peft",) if lora else ())
    missing = [name for name in needed if find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not installed: `pip install 'embedding-fleet[train]'` installs what "
            "`migrate finetune` needs" + (" (peft for --lora)" if "peft" in missing else "")
        )
