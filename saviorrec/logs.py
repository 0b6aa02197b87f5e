"""Logging of the command line and the pipeline: one format, and nothing a user cannot act on.

``configure_logging`` is called once by each entry point (``saviorrec``, the pipeline's training
child process). Besides the format it quiets what libraries log that reads like an error but
asks nothing of the user:

- faiss's loader logs at INFO each optional CPU build it tries and does not find, as
  ``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")``, before it loads the
  generic one: raised to WARNING, so a failure to load any build still shows.
- TensorFlow warns when a tf.function is traced five times in a short run of calls. Keras's
  predict traces its multi-step function (steps_per_execution > 1) once per batch structure
  and once more for each split's last, shorter execution, and ``saviorrec run`` predicts the
  validation and test splits of every variant and seed in one process: the warning names
  Keras's ``make_predict_function``, which the user cannot change. Only that message is dropped;
  any other TensorFlow warning passes.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
QUIET_LOGGERS = {"faiss.loader": logging.WARNING}  # logger -> lowest level shown


class _KerasRetracing(logging.Filter):
    """Drops TensorFlow's retracing warning about Keras's own predict function."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and "make_predict_function" in message)


def configure_logging(level: int = logging.INFO) -> None:
    """Root logging at ``level`` in LOG_FORMAT; the libraries' noise above quieted."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT)
    for name, lowest in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(lowest, level))
    tensorflow = logging.getLogger("tensorflow")
    if not any(isinstance(f, _KerasRetracing) for f in tensorflow.filters):
        tensorflow.addFilter(_KerasRetracing())
