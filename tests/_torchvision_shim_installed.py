"""Importing this installs the test-only torchvision shim (_torchvision_shim.py). conftest
preloads it into multiprocessing's forkserver, so DataLoader workers started from there
(prunekit.data.files.WORKER_START) import torchvision as the test process does."""
import _torchvision_shim

STATE = _torchvision_shim.install()
