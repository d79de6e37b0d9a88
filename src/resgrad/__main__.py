from resgrad.cli import script

script()
