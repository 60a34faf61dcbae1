"""Run folders: a config key added after a folder was started does not block its resume."""

import pytest
import yaml

from deliberate.config import to_dict
from deliberate.errors import DeliberateError
from deliberate.practice import PracticeConfig
from deliberate.rundir import RunDir


def _started_before_the_key_existed(tmp_path):
    """A folder whose config.yaml predates `practice.oversample` and `data`."""
    old = to_dict(PracticeConfig())
    del old["practice"]["oversample"], old["data"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    return RunDir(tmp_path)


def test_a_key_the_folder_predates_counts_as_its_default(tmp_path):
    rd = _started_before_the_key_existed(tmp_path)
    defaults = to_dict(PracticeConfig())
    rd.claim(to_dict(PracticeConfig()), defaults=defaults)  # same run: resumes
    changed = to_dict(PracticeConfig())
    changed["practice"]["oversample"] = 4.0
    with pytest.raises(DeliberateError, match=r"practice.oversample: 1.0 there, 4.0 here"):
        rd.claim(changed, defaults=defaults)


def test_without_defaults_a_missing_key_is_a_difference(tmp_path):
    rd = _started_before_the_key_existed(tmp_path)
    with pytest.raises(DeliberateError, match="different config"):
        rd.claim(to_dict(PracticeConfig()))
