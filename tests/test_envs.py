"""moekit.envs: typed registry, parse errors, warn-once, generated docs are current."""
import logging
from pathlib import Path

import pytest

from moekit import envs
from moekit.errors import MoEInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for v in envs.registry:
        monkeypatch.delenv(v.name, raising=False)
    envs._reset_for_tests()
    yield
    envs._reset_for_tests()


def test_registry_declares_the_required_variables():
    names = [v.name for v in envs.registry]
    assert len(names) == len(set(names))
    for n in ("MOEKIT_BACKEND", "MOEKIT_CONFIG_DIR", "MOEKIT_LOG_LEVEL", "MOEKIT_VALIDATE", "MOEKIT_LINEAR"):
        assert n in names
    for v in envs.registry:
        assert v.name.startswith("MOEKIT_") and v.doc and "\n" not in v.doc


def test_defaults():
    assert envs.get("MOEKIT_BACKEND") == "auto"
    assert envs.get("MOEKIT_CONFIG_DIR") is None
    assert envs.get("MOEKIT_LOG_LEVEL") == "WARNING"
    assert envs.get("MOEKIT_VALIDATE") is False
    assert envs.get("MOEKIT_LINEAR") is True
    assert not envs.is_set("MOEKIT_BACKEND")


@pytest.mark.parametrize("raw, value", [
    ("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("False", False), ("no", False),
    ("off", False), ("", False),
])
def test_bool(monkeypatch, raw, value):
    monkeypatch.setenv("MOEKIT_VALIDATE", raw)
    assert envs.get("MOEKIT_VALIDATE") is value


def test_values_are_read_at_call_time(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "Torch")
    assert envs.get("MOEKIT_BACKEND") == "torch" and envs.is_set("MOEKIT_BACKEND")
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    assert envs.get("MOEKIT_BACKEND") == "triton"
    monkeypatch.setenv("MOEKIT_LOG_LEVEL", "debug")
    assert envs.get("MOEKIT_LOG_LEVEL") == "DEBUG" and envs.log_level() == logging.DEBUG


@pytest.mark.parametrize("name, raw, expected", [
    ("MOEKIT_VALIDATE", "maybe", "a boolean"),
    ("MOEKIT_LINEAR", "2", "a boolean"),
    ("MOEKIT_BACKEND", "cuda", "one of auto, triton, torch"),
    ("MOEKIT_LOG_LEVEL", "LOUD", "a log level"),
])
def test_bad_values_name_variable_expected_actual(monkeypatch, name, raw, expected):
    monkeypatch.setenv(name, raw)
    with pytest.raises(envs.EnvError) as e:
        envs.get(name)
    msg = str(e.value)
    assert msg.startswith(f"{name}: expected {expected}") and msg.endswith(f"got {raw!r}")
    assert isinstance(e.value, ValueError)


def test_config_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEKIT_CONFIG_DIR", str(tmp_path))
    assert envs.get("MOEKIT_CONFIG_DIR") == tmp_path
    monkeypatch.setenv("MOEKIT_CONFIG_DIR", str(tmp_path / "not-yet"))  # may be created later by tuning
    assert envs.get("MOEKIT_CONFIG_DIR") == tmp_path / "not-yet"
    f = tmp_path / "file.json"
    f.write_text("{}")
    monkeypatch.setenv("MOEKIT_CONFIG_DIR", str(f))
    with pytest.raises(envs.EnvError, match="MOEKIT_CONFIG_DIR: expected a directory"):
        envs.get("MOEKIT_CONFIG_DIR")


def test_unknown_name():
    with pytest.raises(MoEInputError, match="name: expected a registered moekit variable"):
        envs.get("MOEKIT_NOPE")


def test_unknown_moekit_variable_warns_once(monkeypatch, caplog):
    monkeypatch.setenv("MOEKIT_BACKNED", "torch")
    with caplog.at_level(logging.WARNING, logger="moekit"):
        envs.get("MOEKIT_BACKEND")
        envs.get("MOEKIT_VALIDATE")
    hits = [r for r in caplog.records if "MOEKIT_BACKNED" in r.getMessage()]
    assert len(hits) == 1 and hits[0].name == "moekit"


def test_warn_once(caplog):
    with caplog.at_level(logging.WARNING, logger="moekit"):
        assert envs.warn_once("k", "first") is True
        assert envs.warn_once("k", "second") is False
        assert envs.warn_once("k2", "third") is True
    msgs = [r.getMessage() for r in caplog.records if r.name == "moekit"]
    assert msgs == ["first", "third"]


def test_optional_import_falls_back_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="moekit"):
        assert envs.optional_import("moekit_no_such_module", "fancy feature", "using the slow path") is None
        assert envs.optional_import("moekit_no_such_module", "fancy feature", "using the slow path") is None
        assert envs.optional_import("json", "json", "n/a") is not None
    msgs = [r.getMessage() for r in caplog.records if r.name == "moekit"]
    assert len(msgs) == 1 and "fancy feature needs moekit_no_such_module" in msgs[0]
    assert "using the slow path" in msgs[0]


def test_logger_level_from_env(monkeypatch):
    monkeypatch.setenv("MOEKIT_LOG_LEVEL", "ERROR")
    assert envs.get_logger().level == logging.ERROR
    envs._reset_for_tests()
    monkeypatch.setenv("MOEKIT_LOG_LEVEL", "bogus")  # logging must not raise
    assert envs.get_logger().level == logging.WARNING


def test_markdown_table_lists_every_variable():
    table = envs.markdown_table()
    lines = table.strip().splitlines()
    assert lines[0] == "| Variable | Type | Default | Description |"
    assert len(lines) == 2 + len(envs.registry)
    for v in envs.registry:
        assert f"`{v.name}`" in table


def test_main_prints_table_and_checks(monkeypatch, capsys):
    assert envs._main([]) == 0
    assert capsys.readouterr().out == envs.markdown_table()
    monkeypatch.setenv("MOEKIT_VALIDATE", "perhaps")
    assert envs._main(["--check"]) == 1
    assert "MOEKIT_VALIDATE" in capsys.readouterr().out


def test_docs_tables_are_current():
    from moekit.info import refresh_docs

    doc = ROOT / "docs" / "envs.md"
    assert "<!-- moekit:envs:begin -->" in doc.read_text()
    assert refresh_docs(str(doc), check=True) == [], (
        "docs/envs.md is stale: python -c \"from moekit.info import refresh_docs; refresh_docs('docs/envs.md')\""
    )


def test_readme_tables_are_current():
    from moekit.info import refresh_docs

    readme = ROOT / "README.md"
    if not readme.exists() or "<!-- moekit:envs:begin -->" not in readme.read_text():
        pytest.skip("README.md has no generated env table yet")
    assert refresh_docs(str(readme), check=True) == [], (
        "README.md is stale: python -c \"from moekit.info import refresh_docs; refresh_docs('README.md')\""
    )


def test_int_variables_are_bounded(monkeypatch):
    from moekit import envs

    monkeypatch.setenv("MOEKIT_TEST_SEED", "-5")
    with pytest.raises(envs.EnvError, match="MOEKIT_TEST_SEED"):
        envs.get("MOEKIT_TEST_SEED")
    monkeypatch.setenv("MOEKIT_TEST_SEED", "99999999999999999999")
    with pytest.raises(envs.EnvError, match="MOEKIT_TEST_SEED"):
        envs.get("MOEKIT_TEST_SEED")
