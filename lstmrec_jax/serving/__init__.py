"""Serving: the Recommender API, the model bundle and its export, user-state stores, the server."""

from lstmrec_jax.serving.recommender import Recommendations
from lstmrec_jax.serving.recommender import Recommender
from lstmrec_jax.serving.recommender import UserState
