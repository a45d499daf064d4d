"""The collectives' tests choose with the default cost model, whatever tuning table
this machine's user cache holds (``auto``'s tables: mpipar/collectives/tuning.py)."""
import os

os.environ["MPIPAR_TUNING"] = "off"
