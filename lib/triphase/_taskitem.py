"""The task item: one downstream-task question with its format and gold answer.

Shared by the story world (which writes task text into the organism's corpus at a
low rate) and by the downstream-task evaluation.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TaskItem:
    """One task item.

    Parameters
    ----------
    family : str
        Task family name (e.g. ``"yesno"``).
    instruction : str
        What the model is asked to do, including the requested answer form.
    input : str
        The item's input text (a short story, a list, ...).
    answer_format : str
        Regular expression a compliant answer matches (full match).
    answer : str
        Gold answer; must itself match ``answer_format``.
    options : tuple of str
        Options for multiple choice (empty otherwise).
    item_id : str
        Stable identifier.
    """

    family: str
    instruction: str
    input: str
    answer_format: str
    answer: str
    options: tuple[str, ...] = field(default_factory=tuple)
    item_id: str = ""

    def __post_init__(self):
        where = f"task item {self.item_id or '?'} (family {self.family!r})"
        for name in ("family", "instruction", "answer_format", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{where}: field {name!r} must be a non-empty string")
        try:
            pattern = re.compile(self.answer_format)
        except re.error as exc:
            raise ValueError(f"{where}: field 'answer_format' is not a valid regex ({exc})") from exc
        if not pattern.fullmatch(self.answer):
            raise ValueError(
                f"{where}: gold answer {self.answer!r} does not match its own format {self.answer_format!r}"
            )
        object.__setattr__(self, "options", tuple(self.options))

    def complies(self, text: str) -> bool:
        """Whether ``text`` (stripped) matches the answer format."""
        return re.fullmatch(self.answer_format, text.strip()) is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = list(self.options)
        return d
