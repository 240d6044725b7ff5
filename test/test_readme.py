"""The README's Python examples run as written (they are the documented public API)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), {})
    out = capsys.readouterr().out
    assert "The red mug (bbox_0) is 1.00 m from the blue chair (bbox_1)." in out
