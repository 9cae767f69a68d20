from hthlight.cli import entry_point

entry_point()
