"""Classification metrics as local ``evaluate`` modules (no Hub download), checked against scikit-learn.

Each is a subclass of ``evaluate.Metric``: stream batches in with ``add_batch`` and call ``compute``.
The conventions are scikit-learn's: classes are ``range(num_labels)`` (absent classes included in
macro averages), a zero denominator gives 0, and top-k ties are broken towards the higher class index.
In multi-process runs, gather with ``accelerator.gather_for_metrics`` first, then add.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_LABEL_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
_SCORE_FEATURES = datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                     "references": datasets.Value("int64")})


def _info(description: str, features: datasets.Features) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(description=description, citation="", inputs_description=description,
                               features=features)


def confusion_counts(predictions, references, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: row = true class, column = predicted class."""
    predictions, references = np.asarray(predictions, np.int64), np.asarray(references, np.int64)
    flat = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def _infer_num_labels(predictions, references) -> int:
    """Without ``num_labels``, the classes are 0 .. the largest class seen (pass it to include unseen ones)."""
    return int(max(np.max(predictions, initial=0), np.max(references, initial=0))) + 1


class Accuracy(evaluate.Metric):
    def _info(self):
        return _info("Fraction of predictions equal to the reference class.", _LABEL_FEATURES)

    def _compute(self, predictions, references, num_labels: int | None = None):
        # num_labels is accepted (and not needed) so Accuracy combines with the modules that need it
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}


class TopKAccuracy(evaluate.Metric):
    """Predictions are per-class scores (logits); a hit when the reference is among the k highest."""

    def _info(self):
        return _info("Fraction of references among the k highest-scoring classes.", _SCORE_FEATURES)

    def _compute(self, predictions, references, k: int = 5):
        scores, references = np.asarray(predictions, np.float64), np.asarray(references)
        k = min(k, scores.shape[1])
        # Stable ascending sort, reversed: ties go to the higher index, as scikit-learn's top_k_accuracy_score.
        top = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]
        return {f"top{k}_accuracy": float((top == references[:, None]).any(axis=1).mean())}


class PrecisionRecallF1(evaluate.Metric):
    """Per-class, macro and support-weighted precision, recall and F1 over ``range(num_labels)``."""

    def _info(self):
        return _info("Per-class and averaged precision, recall and F1.", _LABEL_FEATURES)

    def _compute(self, predictions, references, num_labels: int | None = None):
        num_labels = num_labels or _infer_num_labels(predictions, references)
        counts = confusion_counts(predictions, references, num_labels)
        true_positive = np.diag(counts).astype(np.float64)
        predicted, support = counts.sum(axis=0), counts.sum(axis=1)
        precision = np.divide(true_positive, predicted, out=np.zeros(num_labels), where=predicted > 0)
        recall = np.divide(true_positive, support, out=np.zeros(num_labels), where=support > 0)
        both = precision + recall
        f1 = np.divide(2 * precision * recall, both, out=np.zeros(num_labels), where=both > 0)
        weights = support / support.sum() if support.sum() else np.zeros(num_labels)
        result = {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                  "support": support.tolist()}
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            result[f"macro_{name}"] = float(values.mean())
            result[f"weighted_{name}"] = float((values * weights).sum())
        return result


class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return _info("Counts of (reference, prediction) pairs.", _LABEL_FEATURES)

    def _compute(self, predictions, references, num_labels: int | None = None):
        num_labels = num_labels or _infer_num_labels(predictions, references)
        return {"confusion_matrix": confusion_counts(predictions, references, num_labels).tolist()}


def classification_report(per_class: dict, label_names: list[str]) -> str:
    """A text table in the layout of scikit-learn's ``classification_report``."""
    width = max(12, max(len(n) for n in label_names) + 2)
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for name, row in per_class.items():
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}")
    return "\n".join(lines)


class ClassificationMetrics:
    """Streams (logits, labels) batches into the metric modules; ``compute()`` gives the run's test block."""

    def __init__(self, label_names: list[str], top_k: int = 5):
        self.label_names = list(label_names)
        self.top_k = top_k
        self.losses: list[float] = []
        self.metrics = {name: cls(keep_in_memory=True) for name, cls in
                        (("accuracy", Accuracy), ("topk", TopKAccuracy), ("prf", PrecisionRecallF1),
                         ("confusion", ConfusionMatrix))}

    def add_batch(self, logits, labels, losses=None) -> None:
        logits, labels = np.asarray(logits, np.float32), np.asarray(labels, np.int64)
        predictions = logits.argmax(axis=1)
        for name, metric in self.metrics.items():
            metric.add_batch(predictions=logits if name == "topk" else predictions, references=labels)
        if losses is not None:
            self.losses.extend(np.asarray(losses, np.float64).tolist())

    def compute(self) -> dict:
        num_labels = len(self.label_names)
        accuracy = self.metrics["accuracy"].compute()["accuracy"]
        topk = self.metrics["topk"].compute(k=self.top_k)
        prf = self.metrics["prf"].compute(num_labels=num_labels)
        confusion = self.metrics["confusion"].compute(num_labels=num_labels)["confusion_matrix"]
        per_class = {name: {"precision": prf["precision"][i], "recall": prf["recall"][i], "f1": prf["f1"][i],
                            "support": int(prf["support"][i])} for i, name in enumerate(self.label_names)}
        result = {
            "accuracy": accuracy,
            "top1_error": 1.0 - accuracy,
            "top5_accuracy": next(iter(topk.values())),
            "macro_precision": prf["macro_precision"], "macro_recall": prf["macro_recall"],
            "macro_f1": prf["macro_f1"],
            "weighted_precision": prf["weighted_precision"], "weighted_recall": prf["weighted_recall"],
            "weighted_f1": prf["weighted_f1"],
            "num_samples": int(sum(prf["support"])),
            "per_class": per_class,
            "confusion_matrix": confusion,
            "classification_report": classification_report(per_class, self.label_names),
        }
        if self.losses:
            result["loss"] = float(np.mean(self.losses))
        return result
