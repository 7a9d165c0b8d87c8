"""The one exception type of vggdet.evaluation."""


class EvalError(ValueError):
    """Bad evaluation input (results file, detections, metric); the message is one line naming the source."""
