"""Deterministic Vietnamese and English documents of any length, for chunking and load tests."""

import random

VIETNAMESE = [
    "Nhân viên được hưởng mười hai ngày nghỉ phép có lương mỗi năm.",
    "Đơn xin nghỉ phải được gửi cho quản lý trực tiếp ít nhất ba ngày làm việc trước.",
    "Mọi thiết bị của công ty phải được mã hoá ổ đĩa và khoá màn hình sau năm phút.",
    "Báo cáo tài chính quý được trình lên ban giám đốc trước ngày mười lăm của tháng kế tiếp.",
    "Khi phát hiện sự cố an ninh, hãy báo ngay cho bộ phận công nghệ thông tin qua đường dây nóng.",
    "Quy trình nhập kho yêu cầu kiểm đếm hàng hoá và đối chiếu với phiếu giao nhận.",
    "Chi phí công tác được hoàn trả trong vòng mười ngày sau khi nộp đủ hoá đơn hợp lệ.",
    "Tài liệu mật chỉ được chia sẻ với những người có thẩm quyền phù hợp.",
    "Người lao động làm thêm giờ vào ngày lễ được trả ít nhất ba trăm phần trăm lương.",
    "Hệ thống sao lưu chạy lúc hai giờ sáng và giữ bản sao trong ba mươi ngày.",
]
ENGLISH = [
    "Employees accrue one and a half days of annual leave for every month of service.",
    "Requests for leave must reach the line manager at least three working days in advance.",
    "Every company laptop must use full-disk encryption and lock its screen after five minutes.",
    "Quarterly financial reports are presented to the board before the fifteenth of the following month.",
    "Report any security incident to the IT hotline immediately, even outside working hours.",
    "Goods received at the warehouse are counted and matched against the delivery note.",
    "Travel expenses are reimbursed within ten days of submitting valid receipts.",
    "Confidential documents may only be shared with people holding the appropriate clearance.",
    "Overtime on public holidays is paid at no less than three times the normal hourly rate.",
    "Backups run at two in the morning and each copy is kept for thirty days.",
]


def document(language: str, paragraphs: int, seed: int = 0, title: str = "Policy") -> str:
    """A markdown document: a heading, then paragraphs of 2–9 sentences."""
    pool = VIETNAMESE if language == "vi" else ENGLISH
    rng = random.Random(seed)
    parts = [f"# {title}"]
    for index in range(paragraphs):
        if index % 4 == 3:
            parts.append(f"## Section {index // 4 + 1}")
        parts.append(" ".join(rng.choice(pool) for _ in range(rng.randint(2, 9))))
    return "\n\n".join(parts) + "\n"


def run_on(language: str, words: int, seed: int = 0) -> str:
    """One paragraph with no sentence end at all: only token windows can split it."""
    pool = " ".join(VIETNAMESE if language == "vi" else ENGLISH).replace(".", "").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(pool) for _ in range(words))
