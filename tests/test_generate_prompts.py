"""The LLM prompt templates: the shipped four load and fill; a broken one is named."""

import pytest

from hpjax.generate import prompts


def test_the_four_shipped_templates_fill_with_a_caption():
  assert prompts.names() == ["replace_relation", "replace_synonym", "replace_verb", "swap_and"]
  for name in prompts.names():
    filled = prompts.fill(prompts.load(name), "A dog and a cat on a bed.")
    assert filled.rstrip().endswith("Caption: A dog and a cat on a bed.\nRewritten:")
    assert "{" not in filled


@pytest.mark.parametrize("text,problem", [
    ("Rewrite this caption.", "expected one {caption} placeholder and no other, found none"),
    ("{caption} and {other}", "found ['caption', 'other']"),
    ("{caption} {caption}", "found ['caption', 'caption']"),
    ("{caption", "not a template"),
])
def test_a_template_that_cannot_be_filled_is_named(tmp_path, text, problem):
  path = tmp_path / "mine.txt"
  path.write_text(text)
  with pytest.raises(ValueError) as e:
    prompts.load(str(path))
  assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)


def test_a_user_template_with_literal_braces_loads(tmp_path):
  path = tmp_path / "json.txt"
  path.write_text('Answer as {{"caption": ...}}.\nCaption: {caption}\n')
  assert prompts.fill(prompts.load(str(path)), "x") == 'Answer as {"caption": ...}.\nCaption: x\n'
  with pytest.raises(ValueError, match="'nope': no such file; the shipped ones are"):
    prompts.load("nope")
