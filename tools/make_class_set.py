"""Writes the shipped ImageNet-1k zero-shot class set from the installed OpenCLIP's metadata.

  .venv/bin/python tools/make_class_set.py [--out hpjax/assets/imagenet1k_zeroshot.json]

The class names (1,000, by position) and OpenAI's 80 prompt templates are published facts that
OpenCLIP ships (`open_clip.zero_shot_metadata`); its templates are callables, written here as
format strings. hpjax.data.classification reads the file.
"""

import argparse

from open_clip import zero_shot_metadata

from hpjax.data import classification


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=classification.SHIPPED["imagenet1k"])
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args()
  templates = [template("{}") for template in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
  classification.write_class_set(args.out, zero_shot_metadata.IMAGENET_CLASSNAMES, templates,
                                 overwrite=args.overwrite)
  print(f"wrote {args.out}: {len(zero_shot_metadata.IMAGENET_CLASSNAMES)} classes, "
        f"{len(templates)} templates")


if __name__ == "__main__":
  main()
