"""thresher: select LLM pretraining data while the model trains.

Data flows one way through the sub-packages:
corpus -> labels -> influence -> agents -> train -> evaluate / experiments.
"""

__version__ = "0.1.0"
