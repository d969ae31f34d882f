"""The images a run reads: finding and decoding them, the one preprocessing, the on-disk image store, the
sample data set, and the calibration and evaluation sets made from them."""
