"""Config files: errors name the file, key and value; ``extends`` builds one file on another."""

from __future__ import annotations

from pathlib import Path

import pytest

from saviorrec.config import ConfigError, load_config


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_key_and_bad_value_are_named(tmp_path: Path) -> None:
    bad_key = _write(tmp_path / "a.yaml", "ranker:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"a\.yaml(.|\n)*ranker\.epochz = 3: Extra inputs"):
        load_config(bad_key)
    bad_value = _write(tmp_path / "b.yaml", "ranker:\n  id_dropout: 1.5\n")
    with pytest.raises(ConfigError, match=r"b\.yaml(.|\n)*ranker\.id_dropout = 1\.5"):
        load_config(bad_value)


def test_extends_merges_a_file_over_its_base(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "run:\n  name: base\nsynthetic:\n  n_events: 5000\n"
           "  n_items: 300\nranker:\n  seeds: [0, 1]\n")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "child.yaml",
                   "extends: ../base.yaml\nsynthetic:\n  n_events: 9000\n")
    cfg = load_config(child)
    assert cfg.synthetic.n_events == 9000  # the file's own value
    assert cfg.synthetic.n_items == 300  # kept from the base, beside it in the same section
    assert (cfg.run.name, cfg.ranker.seeds) == ("base", (0, 1))


def test_extends_errors(tmp_path: Path) -> None:
    _write(tmp_path / "x.yaml", "extends: y.yaml\n")
    _write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="config file not found.*missing.yaml"):
        load_config(_write(tmp_path / "z.yaml", "extends: missing.yaml\n"))


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    one_m = load_config(root / "synthetic_1m.yaml")
    assert one_m.synthetic.n_events == 1_000_000
    assert one_m.ranker == load_config(root / "synthetic.yaml").ranker
