/** ROC-AUC, the reference's HatefulMemes metric (`sklearn.metrics.roc_auc_score`). */

import { ErrorCode, FlamingoError } from "../errors.js";

/**
 * The area under the ROC curve of `scores` for binary `labels` (1 positive): the probability
 * that a random positive scores above a random negative, ties counting one half, which is what
 * `roc_auc_score`'s trapezoidal area gives. Computed from average ranks (Mann–Whitney U).
 * Needs both classes, as scikit-learn does.
 */
export function rocAuc(labels: readonly number[], scores: readonly number[]): number {
  if (labels.length !== scores.length) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      `rocAuc needs one score per label: got ${labels.length} labels and ${scores.length} scores`,
    );
  }
  if (labels.some((l) => l !== 0 && l !== 1)) {
    throw new FlamingoError(ErrorCode.InvalidInput, "rocAuc labels must be 0 or 1");
  }
  if (scores.some((s) => Number.isNaN(s)))
    throw new FlamingoError(ErrorCode.InvalidInput, "rocAuc scores must not be NaN");
  const positives = labels.filter((l) => l === 1).length;
  const negatives = labels.length - positives;
  if (positives === 0 || negatives === 0) {
    throw new FlamingoError(
      ErrorCode.InvalidInput,
      "ROC-AUC is undefined when only one class is present: the evaluated items need both labels",
    );
  }
  const order = scores.map((s, i) => [s, i] as const).sort((a, b) => a[0] - b[0]);
  let positiveRankSum = 0;
  for (let start = 0; start < order.length; ) {
    let end = start;
    while (
      end + 1 < order.length &&
      (order[end + 1] as readonly [number, number])[0] === (order[start] as readonly [number, number])[0]
    )
      end++;
    // Tied scores share the mean of their 1-based ranks.
    const rank = (start + end) / 2 + 1;
    for (let k = start; k <= end; k++)
      if (labels[(order[k] as readonly [number, number])[1]] === 1) positiveRankSum += rank;
    start = end + 1;
  }
  return (positiveRankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}
