"""One leaderboard: suites of methods x seeds run as ordinary runs (:mod:`.runner`), compared side by side
(:mod:`.compare`). The suites themselves are data (:mod:`.suites`)."""
