"""Keras 3 layers of the SaviorRec ranker (keras.ops only: TensorFlow, JAX and PyTorch)."""

from tf_ranker.layers.bidirectional_attention import BidirectionalTargetAttention
from tf_ranker.layers.item_id_mask import ItemIdMask
from tf_ranker.layers.mba import ModalBehaviorAlignment
from tf_ranker.layers.simtier import SimTier
from tf_ranker.layers.stat_transform import LogCountTransform
from tf_ranker.layers.target_attention import TargetAttention

__all__ = [
    "BidirectionalTargetAttention",
    "ItemIdMask",
    "LogCountTransform",
    "ModalBehaviorAlignment",
    "SimTier",
    "TargetAttention",
]
