import pytest

from course_utils.profiles import PROFILE_NAMES, Profile, get_profile


def test_default_is_laptop(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert get_profile().name == "laptop"


def test_env_var_and_argument(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "CI ")
    assert get_profile().name == "ci"
    assert get_profile("gpu").name == "gpu"  # the argument wins over the environment


def test_unknown_profile_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError) as err:
        get_profile()
    for name in PROFILE_NAMES:
        assert name in str(err.value)


def test_pick():
    assert Profile("ci").pick(ci=1, laptop=2, gpu=3) == 1
    assert Profile("laptop").pick(ci=1, laptop=2, gpu=3) == 2
    assert Profile("gpu").pick(ci=1, laptop=2, gpu=3) == 3
    assert Profile("gpu").pick(ci=1, laptop=2) == 2  # gpu falls back to laptop


def test_bad_type():
    with pytest.raises(TypeError):
        get_profile(3)  # type: ignore[arg-type]
