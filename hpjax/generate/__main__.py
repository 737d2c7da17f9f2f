"""`python -m hpjax.generate --config=configs/generate.py:input=FILE --workdir=DIR`: the front
door (hpjax.main) with the generate program's config."""

from absl import app

from hpjax import errors, main

if __name__ == "__main__":
  app.run(errors.reported(main.main), flags_parser=errors.parse_flags)
