"""`python -m workers check`: what this worker would run here, before it runs anything.

Prints torch and its CUDA, the device, the attention path chosen by the probe (and why the others
were passed over), the model and its dimension, and embeds one passage to prove the model works.
The worker image's smoke test: a model that cannot load is one line on stderr and exit 2.
"""

import argparse
import json
import sys

from workers.core.entrypoint import run_command
from workers.core.settings import FleetSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="torch, device, attention path and model of this worker")
    check.add_argument("--model", help="model to check (default: FLEET_MODEL)")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.set_defaults(run=_run_check)
    return run_command("workers", parser.parse_args(argv))


def _run_check(args: argparse.Namespace, settings: FleetSettings) -> int:
    report = inspect_worker(settings, args.model or settings.model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"torch {report['torch']} (CUDA {report['cuda'] or 'none'}) on {report['device']}")
        print(f"attention: {report['attention']['path']} ({report['attention']['reason']})")
        for name, why in report["attention"]["passed_over"].items():
            print(f"  passed over {name}: {why}")
        print(f"model {report['model']}: {report['dim']} dims, reads {report['max_seq_length']} tokens")
    return 0


def inspect_worker(settings: FleetSettings, model: str) -> dict:
    """Load `model` as a worker would (probing attention) and embed one passage."""
    import torch

    from workers.core.errors import ConfigError
    from workers.embedding import load_encoder

    try:
        encoder = load_encoder(model, settings.device, settings.attention)
        vector = encoder.encode_documents(["Nhân viên được nghỉ phép mười hai ngày mỗi năm."])
    except ConfigError:
        raise
    except Exception as err:  # the model's own loading errors: say which model and why, in one line
        raise ConfigError(f"cannot load FLEET_MODEL={model} ({type(err).__name__}: {err}): fix FLEET_MODEL") from err
    device = getattr(encoder, "device", "cpu")
    attention = encoder.attention
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": _device_name(device),
        "attention": {"path": attention.path, "reason": attention.reason, "passed_over": attention.passed_over},
        "model": model,
        "dim": int(vector.shape[1]),
        "max_seq_length": encoder.info.max_seq_length,
    }


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, sm{major}{minor})"
    return device


if __name__ == "__main__":
    sys.exit(main())
