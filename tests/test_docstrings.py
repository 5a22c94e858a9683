"""Tool descriptions written as docstrings: the summary is indexed, the Args block describes parameters."""

from __future__ import annotations

from vmcp_opt.optimizer.docstrings import MAX_SUMMARY, read_description

GOOGLE = """Search the web for pages.

Uses the Brave API.

Args:
    query (str): The search terms.
    count (int, optional): How many results,
        at most 20.

Returns:
    dict: the results

Example:
    >>> search(query="x")
    {'a': 1}
"""


def test_google_docstring_keeps_the_summary_and_reads_each_argument() -> None:
    described = read_description(GOOGLE)
    assert described.summary == "Search the web for pages. Uses the Brave API."
    assert described.arguments == {"query": "The search terms.", "count": "How many results, at most 20."}


def test_sphinx_fields_and_numpy_sections_are_read_too() -> None:
    sphinx = read_description("Get the weather.\n:param city: The city name\n:type city: str\n:returns: json")
    assert (sphinx.summary, sphinx.arguments) == ("Get the weather.", {"city": "The city name"})
    numpy = read_description("Add.\n\nParameters\n----------\nx : int\n    The first.\n\nReturns\n-------\nint")
    assert (numpy.summary, numpy.arguments) == ("Add.", {"x": "The first."})


def test_code_blocks_and_lines_in_another_script_beside_english_are_dropped() -> None:
    text = "Convert currency.\n```python\nconvert(1, 'EUR')\n```\n注意：此工具需要有效的 API 密钥。"  # noqa: RUF001
    assert read_description(text).summary == "Convert currency."
    # A description wholly in another language is all there is: kept.
    assert read_description("天气预报工具").summary == "天气预报工具"


def test_a_long_summary_is_cut_at_a_sentence_end() -> None:
    text = "Lists the files. " + "More detail about paging and filters. " * 40
    summary = read_description(text).summary
    assert len(summary) <= MAX_SUMMARY and summary.endswith(".")


def test_plain_descriptions_pass_unchanged() -> None:
    assert read_description("Get the current time in a given timezone").summary == (
        "Get the current time in a given timezone"
    )
