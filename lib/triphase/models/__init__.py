"""Models: checkpoint series and how their checkpoints are chosen, loaded and checked.

* :mod:`~triphase.models.checkpoints`: one checkpoint, Pythia's schedule, choosing checkpoints;
* :mod:`~triphase.models.series`: series presets (YAML) and the registry;
* :mod:`~triphase.models.hub`: Hugging Face hub revisions and the local cache;
* :mod:`~triphase.models.loading`: loading weights one checkpoint at a time;
* :mod:`~triphase.models.integrity`: commits, weight fingerprints, missing branches;
* :mod:`~triphase.models.storyworld` and :mod:`~triphase.models.organism`: the embedded tier's
  story world and the model organism trained on it;
* :mod:`~triphase.models.features`: hidden states at words, shared by the brain and internal perspectives.
"""
