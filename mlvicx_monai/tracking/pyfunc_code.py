"""MLflow "models from code" entry of our registered models (logged as the model's code; never import it).

MLflow executes this file when it loads a registered MLVICX model as a pyfunc; the model object is built
from this package, so no pickle is stored in or loaded from the registry (see :mod:`.pyfunc`).
"""

from mlflow.models import set_model

from mlvicx_monai.tracking.pyfunc import MLVICXPythonModel

set_model(MLVICXPythonModel())
