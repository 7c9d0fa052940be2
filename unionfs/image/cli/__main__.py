from unionfs.image.cli import entry

entry()
