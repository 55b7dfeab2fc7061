"""Where a model's weights come from and how they are stored: the Hub and the authors' URLs (hub), the pinned list
of released models (manifest), the authors' original .th files (original), loading and saving in the Hugging Face
layout (pretrained), provenance, model cards (cards), reading a checkpoint's architecture off its tensors
(inspection), and the model families config.json can name (registry)."""
