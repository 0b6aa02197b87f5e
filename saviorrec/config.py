"""One frozen, typed configuration per run, loaded from one YAML file.

Every tunable value of the pipeline is defined here once, with its default; a YAML file overrides
what it names. Validation errors name the key path and the bad value, e.g.
``configs/x.yaml: ranker.batch_size = -3: Input should be greater than 0``. Unknown keys are
errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "SAVIORREC_DATA"
CONFIG_ENV = "SAVIORREC_CONFIG"  # the config file feature_repo/repo.py builds Feast's objects of


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    source: Literal["movielens", "synthetic"] = "movielens"
    # Folder in the ml-latest-small layout. Relative paths resolve against the repository root.
    # The environment variable SAVIORREC_DATA overrides it.
    source_dir: str = "../shared/data/ml-latest-small"
    # What to do with bad rows (unknown item ids, duplicates, ratings out of range, unparsable
    # timestamps): "error" stops with file, row and value; "skip" drops them and counts them in
    # the prepare summary.
    bad_rows: Literal["error", "skip"] = "error"
    rating_min: float = 0.5
    rating_max: float = 5.0
    # Keep only this fraction of users (deterministic by user id hash); 1.0 keeps all. --quick.
    user_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Drop items no kept user rated (MovieLens): --quick uses it so the encoder's towers see only
    # the items of the subsample. The full profile keeps them (never-rated items are cold items).
    drop_items_without_events: bool = False


class SyntheticConfig(_Frozen):
    n_events: int = Field(100_000, ge=1_000)
    n_users: int = Field(5_000, ge=10)
    n_items: int = Field(5_000, ge=10)
    n_topics: int = Field(20, ge=2)
    # Zipf exponent of item popularity (power law); larger = heavier head.
    popularity_alpha: float = Field(1.1, gt=0.0)
    # Fraction of items that appear only in the last 20% of time (cold items).
    cold_item_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    chunk_events: int = Field(1_000_000, ge=1_000)
    seed: int = 0
    # Events span [start_date, start_date + span_days) in UTC.
    start_date: str = "2020-01-01"
    span_days: int = Field(365, ge=1)
    # Dirichlet concentration of each user's topic preference (small = few favourite topics).
    user_topic_concentration: float = Field(0.3, gt=0.0)
    # Share of events whose topic is drawn from the global topic mix instead of the user's taste.
    exploration: float = Field(0.2, ge=0.0, le=1.0)
    # Text and image are optional per item: these fractions of items get them.
    text_fraction: float = Field(0.9, ge=0.0, le=1.0)
    image_fraction: float = Field(0.9, ge=0.0, le=1.0)
    max_images: int = Field(100_000, ge=0)  # cap on JPEGs written (items beyond it get none)
    image_size: int = Field(32, ge=8, le=256)  # pixels per side


class LabelConfig(_Frozen):
    click_threshold: float = 4.0  # rating >= threshold is a click (label 1)


class SplitConfig(_Frozen):
    # Per user by time: the last test_fraction of each user's events is test, the valid_fraction
    # before that validation, the rest train (ARCHITECTURE.md benchmark protocol).
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction = {self.valid_fraction + self.test_fraction} "
                "must be < 1"
            )
        return self


class SparkConfig(_Frozen):
    master: str = "local[*]"
    app_name: str = "saviorrec"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    # Standalone cluster (--master spark://...): memory and cores per executor.
    executor_memory: str = "1g"
    executor_cores: int = Field(1, ge=1)

    def conf(self) -> dict[str, str]:
        """The Spark settings of every session of a run: the Spark jobs' (spark_jobs.session)
        and Feast's Spark offline store's (feature_repo.profiles), which before this shared
        nothing but the driver memory and ran its executors at Spark's 1g default (out of heap
        materialising 10M events' user sequences)."""
        return {
            "spark.master": self.master,
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.driver.memory": self.driver_memory,
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": str(self.executor_cores),
        }


class CoclickConfig(_Frozen):
    max_time_gap_s: int = Field(86_400, gt=0)  # two clicks at most this far apart in time
    max_position_gap: int = Field(5, ge=1)  # ... and at most this many clicks apart
    min_support: int = Field(2, ge=1)  # pairs co-clicked by fewer users are dropped
    top_k: int = Field(50, ge=1)  # partners kept per item
    # coclick_stats counts an item as cold when its item_pv bucket is <= this index
    # (1 with the default buckets: at most 5 train views).
    cold_max_bucket: int = Field(1, ge=0)


SECONDS_PER_DAY = 86_400
# Length in seconds of each value of stats.snapshot_cadence.
SNAPSHOT_SECONDS: dict[str, int] = {"daily": SECONDS_PER_DAY, "hourly": 3_600}


class StatsConfig(_Frozen):
    # Lower edges of the PV buckets: 0, 1-5, 6-20, 21-100, >100.
    pv_buckets: tuple[int, ...] = (0, 1, 6, 21, 101)
    recent_window_days: int = Field(30, ge=1)
    ctr_prior: float = Field(0.5, gt=0.0, lt=1.0)  # smoothed ctr = (clicks + a*prior)/(pv + a)
    ctr_prior_strength: float = Field(10.0, gt=0.0)
    # Cadence of the item_stats snapshots, honoured by the batch job (spark_jobs/item_stats.py)
    # and the streaming job (spark_jobs/item_stats_stream.py) alike: rows are stamped at the
    # start of a UTC period (00:00 of a day, or the top of an hour) and count the events
    # strictly before it; an event at exactly the start of a period belongs to that period.
    snapshot_cadence: Literal["daily", "hourly"] = "daily"

    @property
    def snapshot_seconds(self) -> int:
        return SNAPSHOT_SECONDS[self.snapshot_cadence]

    @property
    def recent_window_periods(self) -> int:
        """The recent window in snapshot periods (a day is a whole number of periods)."""
        return self.recent_window_days * SECONDS_PER_DAY // self.snapshot_seconds

    @field_validator("pv_buckets")
    @classmethod
    def _buckets(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or v[0] != 0 or any(nxt <= prev for prev, nxt in itertools.pairwise(v)):
            raise ValueError(f"{list(v)} must start at 0 and increase strictly")
        return v

    def bucket_labels(self) -> list[str]:
        labels = []
        for i, lo in enumerate(self.pv_buckets):
            hi = self.pv_buckets[i + 1] - 1 if i + 1 < len(self.pv_buckets) else None
            labels.append(str(lo) if hi == lo else (f"{lo}-{hi}" if hi is not None else f">{lo - 1}"))
        return labels


class StreamConfig(_Frozen):
    # The streaming item_stats job (spark_jobs/item_stats_stream.py) over a folder of event files.
    # Event files read per micro-batch at most (Spark's maxFilesPerTrigger).
    max_files_per_trigger: int = Field(100, ge=1)
    # Seconds between the starts of micro-batches of a running stream (processingTime trigger).
    trigger_seconds: float = Field(1.0, gt=0)


class SequenceConfig(_Frozen):
    max_len: int = Field(50, ge=1)


class FeastConfig(_Frozen):
    repo_dir: str = "feature_repo"
    profile: Literal["local", "production"] = "local"
    # Environment variable holding the Redis connection (production profile), e.g.
    # redis://:password@host:6379/0 . Never logged.
    redis_env: str = "SAVIORREC_REDIS_URL"
    item_stats_ttl_days: int = Field(36_500, ge=1)
    training_chunk_rows: int = Field(1_000_000, ge=1_000)
    # Who builds the training set: "auto" = the Spark job (spark_jobs/training_set.py, on
    # spark.master) in the production profile, the local builder (feature_repo/training.py:
    # duckdb and Feast's duckdb offline store, one process) in the local profile. Both give the
    # same rows (tests/test_training_set_spark.py).
    training_set_engine: Literal["auto", "local", "spark"] = "auto"
    # The local builder finds each sequence item's statistics row by a duckdb ASOF JOIN (Feast's
    # rule; 6.6 s vs 202 s for get_historical_features on 5M pairs, see feature_repo/README.md).
    # "feast" also checks every pair against Feast's get_historical_features (through the Spark
    # offline store in production); "auto" = that check in the production profile (when
    # training_set_engine is "local" there), none in the local one.
    sequence_stats_join: Literal["auto", "duckdb_asof", "feast"] = "auto"
    # Connect and read timeout of the Redis online store (seconds): fail fast, never hang.
    redis_timeout_s: float = Field(5.0, gt=0)

    @property
    def training_engine(self) -> Literal["local", "spark"]:
        """training_set_engine with "auto" resolved by the profile."""
        if self.training_set_engine == "auto":
            return "spark" if self.profile == "production" else "local"
        return self.training_set_engine


class EncoderConfig(_Frozen):
    dim: int = Field(64, ge=2)  # d of z
    fusion_layers: int = Field(3, ge=1)
    fusion_heads: int = Field(4, ge=1)
    fusion_width: int = Field(128, ge=8)  # 128: 3.5x cheaper than 256 on CPU; measured on MovieLens
    temperature: float = Field(0.07, gt=0.0)
    # Tower layers fine-tuned: 0 keeps the towers frozen (their features are computed once and
    # cached); n > 0 trains the last n of the text tower's 6 transformer layers, over cached
    # hidden states entering them. finetune_image trains EfficientNet-Lite0's last MBConv stage
    # and 1x1 head conv over cached feature maps (encoder_torch/finetune.py).
    finetune_text_layers: int = Field(0, ge=0)
    finetune_image: bool = False
    finetune_lr_scale: float = Field(0.1, gt=0)  # tower layers' lr = lr * this: pretrained weights move gently
    max_text_tokens: int = Field(64, ge=8)  # per text field; truncates long overviews on CPU budgets
    # Paper: 10 epochs, lr 1e-4, batch 4096 on Taobao-scale pairs. MovieLens has ~13k pairs, so
    # more, smaller steps at a higher rate: 15 epochs x 50 steps (Hit@30 measured, see report).
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(256, ge=2)
    # Training steps per epoch at most (0: every co-click pair once an epoch); each epoch then
    # trains on a fresh random subset of the pairs. A CPU budget: the synthetic world's step of
    # 256 pairs took ~2.5 s on 2 cores (266 s for 105 steps at 100k events), and the pairs grow
    # with the events up to coclick.top_k per item, so the scale benchmark
    # (benchmarks/pipeline_scale.py) caps the training. Every item is still embedded.
    max_steps_per_epoch: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)
    warmup_epochs: float = Field(1.0, ge=0)
    num_workers: int = Field(2, ge=0)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    hit_k: int = Field(30, ge=1)
    fusion_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    # EfficientNet-Lite0 is trained at 224 px; MovieLens posters are 112x165 px, so upsampling
    # them past 160 adds no detail and 160 costs half of 224 on a CPU.
    image_size: int = Field(160, ge=32)
    tower_batch_size: int = Field(64, ge=1)  # items per tower forward when computing features
    # faiss index for Hit@K: exact "flat", or approximate "ivf" / "hnsw" for millions of items.
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    # Also train the text-only and image-only SaviorEnc (Table 4's ablation rows). Off by default:
    # two more encoders that no later stage reads (880 of a 2,000 s encode stage on a small
    # catalogue, issue 27); `saviorrec run --full-grid` (the paper's grid) turns them on.
    ablations: bool = False
    # Centre z on the catalogue's mean after training (encoder_torch/fusion.py, SaviorEnc):
    # removes the direction every item shares, so cosines and dot products see what differs.
    center: bool = False
    # InfoNCE's sampling-bias correction (Yi et al. 2019; encoder_torch/losses.py): logits minus
    # the log of each in-batch item's share of the co-click pairs.
    logq_correction: bool = False
    # SaviorEnc starts from the off-the-shelf embedding projected to d and learns a correction
    # (encoder_torch/fusion.py, tower skip). Chosen on validation Hit@30, same code and lake:
    # MovieLens 4.45% with it against 3.87% without (test 4.73 / 4.13), quick 5.26 / 3.06
    # (docs/experiments.md, benchmarks/results/encoder_tower_skip.json); MovieLens full's
    # validation AUC is unchanged by it (-0.03 +- 0.10 points over 3 paired seeds).
    tower_skip: bool = True


class RQVAEConfig(_Frozen):
    levels: int = Field(3, ge=1)  # L (paper: 8); the id width, fixed (Feast tags it)
    # K (paper: 2048), the preferred size: the RQ stage raises it when the ids would be too few for
    # the catalogue and lowers it when the catalogue cannot fill it (encoder_torch/rq_stage.py,
    # codebook_plan, and the two keys after this one). The K used is in version.json.
    codebook_size: int = Field(64, ge=2)
    # K^(L-1) >= this x items: the first L-1 levels alone nearly tell the items apart, the last
    # resolves the rest. Measured unique ids (Sinkhorn) against K^(L-1) / items
    # (benchmarks/results/rqvae_utilisation.json): synthetic, 5,000 items, L=3: K=128 (3.3) 97.0%,
    # K=256 (13) 98.7%, K=512 (52) 99.0% (the most its 4,950 distinct z allow); its 1M-event run's
    # z: K=256 97.1%, K=512 98.9%; 1,000 items, L=3: K=64 (4) 87.9%, K=128 (16) 98.5%; MovieLens,
    # L=4, K=64: 99.7% (27), quick 99.2% (50). K^L alone cannot order these: 64^4 ids (1,722x the
    # MovieLens items) were enough, 256^3 (3,355x the synthetic items) not.
    prefixes_per_item: float = Field(16.0, gt=0.0)
    min_items_per_code: int = Field(4, ge=1)  # K <= items / this: every code a mean of a few items
    # Sinkhorn balances each batch: at least this many items per code in a batch (the paper's
    # 16,384 / 2,048 is 8); the batch used is max(batch_size, this x K), at most the catalogue.
    batch_items_per_code: int = Field(4, ge=1)
    latent_dim: int = Field(64, ge=2)
    hidden: tuple[int, ...] = (128,)
    lambda_recon: float = 1000.0  # lambda0
    lambda_commit: float = 0.5  # lambda1
    temperature: float = Field(0.07, gt=0.0)
    # Steps: epochs x items / batch, whatever the events (600 at 5,000 items). The synthetic 1M
    # run's RQ-VAE took 2,988 s on a busy machine; the same fit (same ids and loss) took 16.5 s
    # on the 2 idle cores: its thousands of tiny ops a step (Sinkhorn's 50 iterations x 3
    # levels) each wait for both torch threads, so other jobs on the cores slow it 10-180x
    # (benchmarks/results/pipeline_scale.json records each stage's load average).
    epochs: int = Field(150, ge=1)
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(0.002, gt=0)
    sinkhorn_iters: int = Field(50, ge=1)
    # In units of the batch's median nearest-code cost (encoder_torch/sinkhorn.py).
    sinkhorn_epsilon: float = Field(0.03, gt=0)
    # Share of the epochs that assign by Sinkhorn; the rest use the nearest code, as the ids are
    # read (encoder_torch/train_rqvae.py). Sinkhorn to the end (1.0) gave the MovieLens quick run
    # 71.1% unique ids against 99.2% at 0.5 (the synthetic catalogue at K=256: 98.7% at both).
    sinkhorn_fraction: float = Field(0.5, ge=0.0, le=1.0)
    assignment: Literal["sinkhorn", "argmin"] = "sinkhorn"
    dead_code_every: int = Field(10, ge=1)  # epochs between dead-code reseeding
    device: str = "auto"
    beta: float = Field(0.25, ge=0.0)  # encoder-side commitment weight inside L_commit (VQ-VAE)
    kmeans_init: bool = True  # codebooks start at faiss k-means centroids of each level's residuals
    compare_argmin: bool = True  # also train an argmin-assignment RQ-VAE for the metrics
    # A collapse stops the run (encoder_torch/semantic_ids.py): a level using less than
    # min_utilization of the codes its items can use, or a unique ratio (before the disambiguation
    # index) under min_unique_ratio x the most the ids allow (1, or K^L / items when that is less).
    # The MovieLens quick run's collapse (issue 27: 1.6-12.5% of the codes, 0.06-0.28% unique ids)
    # is far under both. A small world given few ids on purpose is not a collapse: 1,000 synthetic
    # items at L=2, K=16 (256 ids) get 5.8% unique ids, 23% of the 25.6% possible, before and
    # after this RQ-VAE. The 98% unique ids asked of a sound run: benchmarks/rqvae_utilisation.py.
    min_utilization: float = Field(0.5, ge=0.0, le=1.0)
    min_unique_ratio: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class RankerConfig(_Frozen):
    variants: tuple[str, ...] = ("base", "simtier", "no_mba", "no_raw_mm", "no_bidir", "full")
    seeds: tuple[int, ...] = (0, 1, 2)
    id_dim: int = Field(16, ge=1)
    stat_dim: int = Field(16, ge=1)
    heads: int = Field(8, ge=1)
    attention_dim: int = Field(64, ge=1)
    mba_dim: int = Field(64, ge=1)  # d_mba: 64 | 32 | 16 | 8 (Table 5)
    dnn_units: tuple[int, ...] = (256, 128, 64)
    feature_cross: bool = False  # keras-rs FeatureCross (DCN-v2) over the DNN inputs
    simtier_bins: int = Field(10, ge=2)
    batch_size: int = Field(1024, ge=1)
    epochs: int = Field(10, ge=1)
    # Training batches per epoch at most (0: the whole train split each epoch); each epoch then
    # draws that many batches of a fresh shuffle, and the learning-rate decay spans the capped
    # steps. A CPU budget for the scale benchmark (benchmarks/pipeline_scale.py), where a 10M-event
    # train split is ~7,000 batches an epoch; validation still reads the whole split.
    max_steps_per_epoch: int = Field(0, ge=0)
    lr: float = Field(0.01, gt=0)
    lr_final: float = Field(0.001, gt=0)
    # Adagrad's accumulator at the start (Keras's and TensorFlow's default 0.1). A coordinate's
    # step is lr * g / sqrt(accumulator + sum g^2): an embedding row read by few samples, with
    # gradients ~1e-3, moves ~lr / 300 per step under 0.1.
    adagrad_initial_accumulator: float = Field(0.1, gt=0)
    early_stopping_patience: int = Field(2, ge=0)
    hash_buckets_user: int = Field(0, ge=0)  # 0 = vocabulary from the data (max id + 1)
    bootstrap_samples: int = Field(1000, ge=10)
    mixed_precision: bool = False
    distribution: Literal["none", "data_parallel"] = "none"
    # Training steps run per compiled call (JAX/TF; the torch backend runs 1): Keras's loop costs
    # ~0.7 ms per call, half a 1024 step on an H200; 8 took fit from 374k to 545k samples/s
    # (benchmarks/results/ranker_fit_input_jax.json).
    steps_per_execution: int = Field(8, ge=1)
    # Rows per batch of validation (every epoch) and of the final predictions: no gradient, so
    # a larger batch only saves per-batch overhead. Rounded down to a multiple of batch_size
    # (at least batch_size), so data_parallel's division by the devices still holds. At the
    # paper's sizes on one H200 validation at 1024 cost 0.6-0.7 s an epoch (229k rows) against
    # 0.26 s at 8192 (benchmarks/results/train_speed.json). The same AUC: the metric's counts
    # do not depend on how the rows are batched.
    eval_batch_size: int = Field(8192, ge=1)
    # "device": item embeddings and semantic ids are gathered from tables held in the model on
    # the accelerator (tf_ranker.item_tables; the host sends ids); "host": gathered into each
    # numpy batch. Same results; "device" removes GPU training's input bottleneck.
    item_tables: Literal["device", "host"] = "device"
    # With item_tables: device, each split's ids and statistics are packed once into one float32
    # and one int32 matrix (tf_ranker.packed): two row gathers per batch instead of eight arrays
    # (0.67 -> 0.27 ms per batch of 1024 on a CPU core). Same batches, same results.
    packed_inputs: bool = True
    # Threads building training batches ahead of the device (keras PyDataset workers). 1 (in the
    # training thread) is fastest on one GPU: more threads contend for the GIL with the loop that
    # feeds the device (batch 1024, one H200: 1 worker 775-805k samples/s, 4 workers 542-587k;
    # benchmarks/results/ranker_data_parallel_scaling.json). Under distribution: data_parallel
    # the threads also copy each batch to the devices (tf_ranker.batches.data_placement); at
    # per-GPU batch 8192, 4 workers scale 2 GPUs 1.80x, 1 worker 1.79x (same JSON).
    input_workers: int = Field(1, ge=1)
    # Floor under |v|^2 in the MBA's L2 normalisation: bounds the gradient at the zero init.
    mba_norm_epsilon: float = Field(1e-2, gt=0)
    # Standardise the log1p'd item and user statistics with the training split's per-column mean
    # and std (stored in the model, so serving applies the same). Off: log1p only (means of 2-4.5
    # next to id embeddings of |x| ~ 0.05).
    standardize_stats: bool = False
    # Attention weights of every target-attention block (tf_ranker/layers/target_attention.py):
    # "softmax" over the sequence (multi-head attention [29]) or "none", eq. 10 as printed
    # (DIN's [41] unnormalised weighting).
    attention_normalization: Literal["softmax", "none"] = "softmax"
    # Item ids without a training event (cold items): "shared" reads one "unknown" id embedding
    # (row 0) for all of them; "own" keeps each id's own, never-trained, random row
    # (tf_ranker/layers/item_id_mask.py).
    unseen_item_ids: Literal["shared", "own"] = "own"
    # Fraction of training candidates whose id is replaced by the "unknown" id (DropoutNet's
    # input dropout), so that row learns to stand for an item known only by statistics and
    # content.
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class OnboardConfig(_Frozen):
    # An item with neither text (title, genres, overview) nor an image: "missing_tokens" embeds
    # it from SaviorEnc's learned missing-modality tokens alone (every such item then gets the
    # same embedding), "refuse" refuses the whole file naming the item.
    no_content: Literal["missing_tokens", "refuse"] = "missing_tokens"
    # Items per forward pass of the towers and SaviorEnc when onboarding many items at once.
    batch_size: int = Field(256, ge=1)
    # Load the encoder into `saviorrec serve` so that POST /items onboards (torch + the towers:
    # ~1 GB of memory); false: POST /items answers 501 and `saviorrec items add` onboards.
    in_service: bool = True


class ServingConfig(_Frozen):
    host: str = "127.0.0.1"
    # 8080, not 8500/8501: those are TF-Serving's gRPC and REST ports, which the exported
    # SavedModel may be served on beside this service.
    port: int = Field(8080, ge=1, le=65535)
    max_candidates: int = Field(1000, ge=1)
    # Largest POST /rank body in bytes, refused with 413 before it is read or parsed. The
    # default holds max_candidates ids of 19 digits many times over; the check below makes
    # sure a compact body of max_candidates such ids always fits.
    max_body_bytes: int = Field(1_048_576, ge=1)
    # SavedModel folder to serve; "" = the run's Lake.export_dir (written by `saviorrec export`).
    model_dir: str = ""
    # Environment variable with the Redis password when the URL of feast.redis_env has none.
    # Never logged; redacted from every log line and error message.
    redis_password_env: str = "SAVIORREC_REDIS_PASSWORD"
    # Items read from the online store at start-up to compare their rqvae_version with the model's.
    version_probe_items: int = Field(64, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Online reads: "auto" reads Feast's Redis hashes directly in production (same keys and
    # values, ~10x faster than FeatureStore.get_online_features) and Feast's API on sqlite;
    # "feast" always goes through FeatureStore.get_online_features.
    online_reader: Literal["auto", "feast"] = "auto"
    # In-process cache of item features (shared by all users; item_stats are daily snapshots,
    # embeddings change with a model version): an item's features are served from memory for
    # at most item_cache_ttl_s seconds after they were read, then read again. At most
    # item_cache_items items (least recently used evicted first; ~1.2 KB each at d=64, so the
    # default holds at most ~60 MB). 0 in either disables it. The user's sequence is never
    # cached, so a store outage still fails every request (503).
    item_cache_ttl_s: float = Field(300.0, ge=0)
    item_cache_items: int = Field(50_000, ge=0)
    # An item the store had no row for is kept at most this long (seconds; 0: never cached, the
    # store is asked again on every request), so that an item onboarded by another process
    # (`saviorrec items add`) is scored with its own features on the first request after its
    # push (0) or within this delay; POST /items also drops its items from the cache.
    item_cache_missing_ttl_s: float = Field(0.0, ge=0)
    # A full cache whose hit rate over a window of item_cache_items lookups is under this reads
    # the store directly, sending one request in item_cache_probe_every through the cache to
    # keep judging (serving/item_cache.py). 0: never bypass. At a 1M-item catalogue the cached
    # path cost ~7 ms of server CPU a request more than the direct one at 5% hits; a hit saves
    # ~0.04 ms of CPU (8.3 ms to read 200 items) or ~0.08 ms of wall time (20 ms for 250), so
    # break-even lies between ~0.35 and ~0.7 (benchmarks/results/pipeline_scale.json,
    # serving_1M_before_cache_floor). 0.5 is taken from that range, not measured as the best.
    item_cache_min_hit_rate: float = Field(0.5, ge=0, le=1)
    item_cache_probe_every: int = Field(16, ge=1)
    # Compile the SavedModel's serving signature with XLA when loading it (about 3x faster on
    # CPU). XLA compiles once per input shape, so the candidates are padded to the next power
    # of two (>= 8) and every size up to max_candidates is compiled at start-up.
    xla: bool = True
    # Threads per TensorFlow op and between ops in the service process; 0 = TensorFlow's
    # default (one per core). Requests run side by side in FastAPI's thread pool, so on a small
    # machine fewer threads per request may trade a little latency alone for less contention.
    tf_threads: int = Field(0, ge=0)
    # uvicorn worker processes, each with its own model, store connections and item cache
    # (serving/app.py says what they share). One process runs its Python on one core at a time
    # (the GIL): at a 1M-item catalogue it served ~80 requests/s on 2 cores with the second
    # core mostly idle (benchmarks/results/pipeline_scale.json, serving_1M_before_workers).
    # 1 by default: each worker holds a copy of the model (~0.3 GB with a 1M-item vocabulary)
    # and of the onboarding models, and an item onboarded by POST /items is dropped from the
    # cache of the worker that answered only; set it to the cores the service may use.
    workers: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _body_fits_the_candidates(self) -> ServingConfig:
        # {"user_id": <19 digits>, "item_ids": [...]} with ", " between ids of 19 digits
        needed = 64 + 21 * self.max_candidates
        if self.max_body_bytes < needed:
            raise ValueError(f"max_body_bytes = {self.max_body_bytes} cannot hold a request of "
                             f"max_candidates = {self.max_candidates} int64 ids (at least "
                             f"{needed} bytes)")
        return self


# `saviorrec replay`'s user-feature modes (saviorrec/replay.py says what each is); here so that
# the CLI's parser reads them without importing the replay.
REPLAY_USER_FEATURES = ("per_row", "as_of_start", "stream")


class ReplayConfig(_Frozen):
    # `saviorrec replay` (saviorrec/replay.py): the held-back period through the live system.
    # Test rows scored, the first ones in time order (0: every one); the cap is in the output.
    max_test_rows: int = Field(2000, ge=0)
    # Seconds to wait for the service to be ready (the SavedModel, the onboarding models and the
    # store loaded) or for one HTTP answer (POST /items embeds a step's new items).
    timeout_s: float = Field(300.0, gt=0)
    # Seconds to wait for the stream to commit one event file. A micro-batch takes 2-7 s on two
    # shared cores, but Spark compacts the file source's log every 10 batches, once measured at
    # 95 s on a loaded machine: a wait shorter than that fails a long replay for nothing.
    batch_timeout_s: float = Field(900.0, gt=0)


class RunConfig(_Frozen):
    name: str = "movielens"
    # Folder of this run (lake, models, report). Relative paths resolve against the repo root.
    root: str = "runs/movielens"


class Config(_Frozen):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    spark: SparkConfig = SparkConfig()
    coclick: CoclickConfig = CoclickConfig()
    stats: StatsConfig = StatsConfig()
    stream: StreamConfig = StreamConfig()
    sequences: SequenceConfig = SequenceConfig()
    feast: FeastConfig = FeastConfig()
    encoder: EncoderConfig = EncoderConfig()
    rqvae: RQVAEConfig = RQVAEConfig()
    ranker: RankerConfig = RankerConfig()
    serving: ServingConfig = ServingConfig()
    onboard: OnboardConfig = OnboardConfig()
    replay: ReplayConfig = ReplayConfig()

    # ---- resolved paths -------------------------------------------------------------------
    def source_dir(self) -> Path:
        raw = os.environ.get(DATA_ENV) or self.data.source_dir
        return _resolve(raw)

    def run_dir(self) -> Path:
        return _resolve(self.run.root)

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys replaced, validated again: ``cfg.with_overrides(ranker={...})``."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        return Config.model_validate(data)


def dump_config(cfg: Config) -> str:
    """``cfg`` as a YAML file that loads back to the same configuration, with run.root made
    absolute (relative roots resolve against the repository root, which the file may not sit
    in)."""
    data = cfg.with_overrides(run={"root": str(cfg.run_dir())}).model_dump(mode="json")
    header = (f"# Resolved configuration of the run {cfg.run.name!r}: every value it used, overlays\n"
              "# (e.g. --quick) applied. Written by saviorrec; `saviorrec run --config <this file>`\n"
              "# repeats the run.\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def config_path_from_env(default: Path) -> Path:
    """The config file named by ``$SAVIORREC_CONFIG`` (or ``default``), as an absolute path.

    A relative name is taken from the folder the command was started in: ``$PWD``, which the
    shell sets and a chdir does not change (Feast's CLI changes into the repo folder before it
    imports repo.py, so the current directory is no longer the user's), then from the repository
    root, as the config's own relative paths. A name found in neither is an error naming both.
    """
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        return Path(default)
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    starts = [Path(d) for d in (os.environ.get("PWD"), Path.cwd(), REPO_ROOT) if d]
    for start in starts:
        if (start / path).is_file():
            return (start / path).resolve()
    tried = ", ".join(dict.fromkeys(str(s / path) for s in starts))
    raise ConfigError(f"${CONFIG_ENV} = {raw!r}: no such file (tried {tried})")


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, key and value."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


EXTENDS_KEY = "extends"  # a config file's base file, relative to it; the file replaces what it names


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML at ``path`` merged over the chain of files its ``extends`` key names."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' forms a cycle: {chain}")
    raw = _read_yaml(path)
    base = raw.pop(EXTENDS_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {EXTENDS_KEY} = {base!r}: expected a file name")
    return _merge(_read_with_bases(path.parent / base, (*seen, path)), raw)


def load_config(
    path: str | os.PathLike[str], overlays: tuple[str | os.PathLike[str], ...] = ()
) -> Config:
    """Load ``path`` (over the file its ``extends`` key names, if any); each overlay file (e.g.
    configs/quick.yaml) then replaces what it names."""
    path = Path(path)
    raw = _read_with_bases(path)
    for overlay in overlays:
        raw = _merge(raw, _read_yaml(Path(overlay)))
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(path, raw, e)) from None


def _explain(path: Path, raw: dict[str, Any], err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in err.errors():
        loc = [str(x) for x in item["loc"]]
        key = ".".join(loc)
        value: Any = raw
        for part in item["loc"]:
            try:
                value = value[part]  # type: ignore[index]
            except (KeyError, IndexError, TypeError):
                value = "<missing>"
                break
        lines.append(f"  {key} = {value!r}: {item['msg']}")
    return "\n".join(lines)
