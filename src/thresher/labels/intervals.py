"""Multi-agent paper Eq. 3: a quality score in [0, 5] -> one of five intervals.

I_j = [j-1, j) for j = 1..4 and I_5 = [4, 5]. Codes are 0-based (interval I_j has code j-1).
Scores outside [0, 5] are clipped to it (a regression head can overshoot slightly); NaN -> -1
(missing label).
"""

from __future__ import annotations

import numpy as np

QUALITY_INTERVALS = ["[0,1)", "[1,2)", "[2,3)", "[3,4)", "[4,5]"]


def quality_interval(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    codes = np.floor(np.clip(np.nan_to_num(s, nan=0.0), 0.0, 5.0)).astype(np.int16)
    codes = np.minimum(codes, 4)  # 5.0 belongs to [4, 5]
    codes[np.isnan(s)] = -1
    return codes
