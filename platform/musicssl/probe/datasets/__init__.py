"""One adapter per real dataset: `load(root, task) -> list[Example]` reads the dataset's public on-disk layout
from a user-supplied root folder and builds the split the paper / MARBLE v1 uses.

| module        | tasks                                        | root holds                                            |
|---------------|----------------------------------------------|-------------------------------------------------------|
| `mtt`         | mtt                                          | annotations_final.csv, <0-f>/*.mp3                    |
| `gtzan`       | gtzan_genre                                  | genres/<genre>/*.wav, {train,valid,test}_filtered.txt |
| `gtzan_rhythm`| gtzan_beat                                   | the GTZAN root + jams/<genre>.000NN.wav.jams          |
| `giantsteps`  | giantsteps_key                               | giantsteps-mtg-key-dataset/, giantsteps-key-dataset/  |
| `emomusic`    | emo                                          | clips_45seconds/*.mp3, annotations/*.csv              |
| `nsynth`      | nsynth_instrument, nsynth_pitch              | nsynth-{train,valid,test}/examples.json + audio/      |
| `vocalset`    | vocalset_singer, vocalset_technique (3 s chunks) | FULL/<singer>/<context>/<technique>/*.wav         |
| `mtg_jamendo` | mtg_genre, mtg_instrument, mtg_moodtheme, mtg_top50 | data/splits/split-0/*.tsv, audio-low/NN/*.low.mp3 |

Each module's docstring gives its layout and split decisions in full: EMO, GiantSteps and VocalSet recompute
MARBLE's preprocess.py splits (artist SHA-1 rules; VocalSet's VAD-trimmed 3 s chunks and seeded group splits). The registry (`probe/tasks.py`) imports
an adapter on first use.
"""
