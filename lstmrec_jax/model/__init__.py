"""The Flax NNX recommender: registries of encoders and item representations, the model.

model -> kernels -> lstmrec_jax.core: the functional recurrences live in `lstmrec_jax.core`.
"""

from lstmrec_jax.model.config import ModelConfig
from lstmrec_jax.model.registry import ENCODERS
from lstmrec_jax.model.registry import ITEM_REPRS
from lstmrec_jax.model.registry import SequenceEncoder
from lstmrec_jax.model.registry import register_encoder
from lstmrec_jax.model.registry import register_item_repr
from lstmrec_jax.model import content  # registers "content", "sum", "gate"
from lstmrec_jax.model.content import ContentInputs
from lstmrec_jax.model import encoders  # registers "lstm", "gru", "transformer"
from lstmrec_jax.model import cross_domain  # registers "xd_lstm", "xd_shared"
from lstmrec_jax.model.modules import ItemEmbedding  # registers "id"
from lstmrec_jax.model.modules import SeqRecModel
from lstmrec_jax.model.modules import create_model
