"""Where models, data and outputs live, behind a small interface; the training loop only sees local folders."""
