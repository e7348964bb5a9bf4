"""Output folders: a file in the way is a one-line ThresherError naming it, never an OSError traceback."""

from __future__ import annotations

import pytest

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_json, make_dir


def test_a_file_in_the_way_of_an_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me\n")
    for fn in (lambda: make_dir(blocker), lambda: make_dir(blocker / "sub" / "deeper"),
               lambda: atomic_write_json(blocker / "x.json", {"a": 1})):
        with pytest.raises(ThresherError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and f"{blocker} is a file, not a folder" in msg, msg
    assert blocker.read_text() == "keep me\n"


def test_make_dir_creates_parents_and_accepts_an_existing_folder(tmp_path):
    assert make_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    make_dir(tmp_path / "a" / "b")
