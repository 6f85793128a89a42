"""The functional recurrences (LSTM, GRU), masks, resets and dropout: pure jnp over arrays.

Both the model and the kernels import this package, and it imports neither of them.
"""

from lstmrec_jax.core.gru import gru_cell
from lstmrec_jax.core.gru import gru_layer
from lstmrec_jax.core.gru import gru_reference_loop
from lstmrec_jax.core.gru import gru_stack
from lstmrec_jax.core.gru import gru_stack_step
from lstmrec_jax.core.gru import init_gru_params
from lstmrec_jax.core.lstm import LSTMState
from lstmrec_jax.core.lstm import Recurrence
from lstmrec_jax.core.lstm import init_lstm_params
from lstmrec_jax.core.lstm import input_projection
from lstmrec_jax.core.lstm import lstm_cell
from lstmrec_jax.core.lstm import lstm_layer
from lstmrec_jax.core.lstm import lstm_recurrence
from lstmrec_jax.core.lstm import lstm_reference_loop
from lstmrec_jax.core.lstm import lstm_stack
from lstmrec_jax.core.lstm import lstm_stack_step
from lstmrec_jax.core.lstm import lstm_step
from lstmrec_jax.core.ops import dropout
from lstmrec_jax.core.ops import locked_dropout
from lstmrec_jax.core.ops import segment_ids
from lstmrec_jax.core.ops import segment_positions
