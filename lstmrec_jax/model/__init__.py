"""The functional LSTM core and the Flax NNX recommender built on it."""

from lstmrec_jax.model.lstm import LSTMState
from lstmrec_jax.model.lstm import init_lstm_params
from lstmrec_jax.model.lstm import input_projection
from lstmrec_jax.model.lstm import lstm_cell
from lstmrec_jax.model.lstm import lstm_layer
from lstmrec_jax.model.lstm import lstm_recurrence
from lstmrec_jax.model.lstm import lstm_reference_loop
from lstmrec_jax.model.lstm import lstm_stack
from lstmrec_jax.model.modules import ItemEmbedding
from lstmrec_jax.model.modules import ModelConfig
from lstmrec_jax.model.modules import SeqRecModel
from lstmrec_jax.model.modules import model_config_from_config
from lstmrec_jax.model.modules import model_config_from_dict
