"""Files, images and data sets as users hand them over: atomic writes and safe reads (files), uint8 NHWC images
(images), the standard data files and image folders (datasets), charts (plots), progress bars (progress).
The lowest wing: it knows nothing of models."""
