"""A synthetic company corpus of any size, written fast: documents of 1 to 30 chunks (most of them a
few), Markdown, text and HTML, in department/year/team folders, each department's `.fleet.yaml`
giving its level. Sized for chunks of 60-120 words (FLEET_CHUNK_MIN/MAX_TOKENS 60/120 with the
`null` model, which counts words). Used by ops/bench/scale.py and the memory test.
"""

import random
from pathlib import Path

# Documents of this many chunks, with these weights: most are a page or two, a few are manuals.
CHUNK_MIX = ((1, 30), (2, 25), (3, 20), (5, 15), (10, 8), (30, 2))
DEPARTMENTS = (
    ("nhan-su", "employee_only"),
    ("ke-toan", "manager_only"),
    ("ban-giam-doc", "director_only"),
    ("cong-khai", "public"),
    ("engineering", "employee_only"),
    ("legal", "manager_only"),
    ("kho-van", "employee_only"),
    ("sales", "public"),
)
FILES_PER_FOLDER = 200
_VOCABULARY = (
    "quy trình nhân viên phê duyệt hợp đồng kho hàng báo cáo doanh thu chi phí khách hàng bảo mật "
    "mạng nội bộ đào tạo an toàn lao động nghỉ phép lương thưởng kiểm toán thuế hải quan vận chuyển "
    "policy procedure approval contract warehouse report revenue cost customer security network "
    "training safety leave salary bonus audit tax customs shipment server backup incident deploy "
    "review budget forecast supplier invoice payment quarter target risk compliance access"
)
WORDS = tuple(_VOCABULARY.split())


def write_corpus(root: Path, chunks: int, seed: int = 7) -> dict:
    """Documents adding up to about `chunks` chunks of 60-120 words; returns what was written."""
    rng = random.Random(seed)
    sizes, weights = zip(*CHUNK_MIX, strict=True)
    for department, level in DEPARTMENTS:
        (root / department).mkdir(parents=True)
        (root / department / ".fleet.yaml").write_text(f"access_level: {level}\n")
    planned = files = written = 0
    while planned < chunks:
        department = DEPARTMENTS[files % len(DEPARTMENTS)][0]
        folder = root / department / str(2019 + files // 7 % 7) / f"team-{files // FILES_PER_FOLDER:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        count = rng.choices(sizes, weights)[0]
        suffix = rng.choices((".md", ".txt", ".html"), (70, 20, 10))[0]
        text = document_text(rng, files, count, suffix)
        (folder / f"tai-lieu-{files:07d}{suffix}").write_text(text, encoding="utf-8")
        planned, files, written = planned + count, files + 1, written + len(text.encode())
    return {"files": files, "bytes": written}


def document_text(rng: random.Random, number: int, chunks: int, suffix: str) -> str:
    """`chunks` sections of 90 words on average (two paragraphs each), numbered so that no two
    documents share a chunk."""
    sections = []
    for section in range(chunks):
        paragraphs = [" ".join(rng.choices(WORDS, k=rng.randint(35, 55))) + "." for _ in range(2)]
        sections.append((f"Mục {number}.{section}", paragraphs))
    if suffix == ".html":
        body = "".join(
            f"<h2>{title}</h2>" + "".join(f"<p>{p}</p>" for p in paragraphs) for title, paragraphs in sections
        )
        return f"<html><head><title>Tài liệu {number}</title></head><body>{body}</body></html>"
    marker = "## " if suffix == ".md" else ""
    return "\n\n".join(f"{marker}{title}\n\n" + "\n\n".join(paragraphs) for title, paragraphs in sections) + "\n"
