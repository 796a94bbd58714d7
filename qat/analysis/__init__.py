"""When int8 loses accuracy: which layer, and by how much.

``layer_similarity`` compares two forms of a model layer by layer (float vs fake-quant, fake-quant
vs int8); ``sensitivity`` ranks layers by the damage their quantization does. Both use only
``qat.quant``'s public API; the writers turn their records into CSV, markdown and PNG charts.
"""

from qat.analysis.sensitivity import SENSITIVITY_VIEWS, LayerSensitivity, sensitivity
from qat.analysis.similarity import SIMILARITY_MODES, LayerSimilarity, layer_similarity
from qat.analysis.writers import markdown_table, plot_sensitivity, plot_similarity, write_csv

__all__ = [
    "SENSITIVITY_VIEWS",
    "SIMILARITY_MODES",
    "LayerSensitivity",
    "LayerSimilarity",
    "layer_similarity",
    "markdown_table",
    "plot_sensitivity",
    "plot_similarity",
    "sensitivity",
    "write_csv",
]
