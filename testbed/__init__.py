"""Real peers and data that the tests and the benchmarks both run against: an Orthanc process
(testbed/orthanc.py) and the identity corpus (testbed/identity_corpus.py). Not part of the
product: nothing under app/ imports it."""
