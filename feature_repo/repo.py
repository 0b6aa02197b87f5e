"""The definitions Feast's CLI reads: ``feast -c feature_repo apply``.

Objects are those of :func:`feature_repo.definitions.build` for the run of the config named by
$SAVIORREC_CONFIG (default configs/movielens.yaml, whose run folder runs/movielens matches the
paths of feature_store.yaml); $SAVIORREC_FEAST_PROFILE=production selects the Spark sources
(use it with ``-f feature_repo/feature_store.production.yaml``). A relative $SAVIORREC_CONFIG is
taken from the folder the command started in, not from this one (saviorrec.config,
config_path_from_env). Every run folder is a Feast repository of its own too:
``feast -c <run>/feast ...`` (feature_repo/profiles.py, write_run_repo).
"""

from __future__ import annotations

import os

from feature_repo.definitions import build
from saviorrec.config import REPO_ROOT, config_path_from_env, load_config

_cfg = load_config(config_path_from_env(REPO_ROOT / "configs" / "movielens.yaml"))
_cfg = _cfg.with_overrides(
    feast={"profile": os.environ.get("SAVIORREC_FEAST_PROFILE", _cfg.feast.profile)}
)
_defs = build(_cfg)

item = _defs.item
user = _defs.user
item_stats = _defs.item_stats
item_multimodal = _defs.item_multimodal
user_sequence = _defs.user_sequence
ranker_training = _defs.ranker_training
ranker_serving = _defs.ranker_serving
