"""Helpers the tests share: data sets, fakes that cannot be real here (a faulty network, an
authorization server process), validators, and the run's log check."""
