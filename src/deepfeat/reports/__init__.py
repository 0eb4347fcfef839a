"""HTML reports: the shared page helper (:mod:`deepfeat.reports.html`) and the prediction gallery."""
