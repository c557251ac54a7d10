"""One line per needs-review case saying what the reviewer should check, and where.

The extract stage writes its reasons as phrases joined by "; ". Each phrase kind it
writes has one piece of advice here, found by a fragment of its wording; a reason no
fragment matches gets the general advice, so a new kind of reason never leaves a case
without one. Advice names files and settings as the reader knows them (the project's
folders, its section of params.yaml), never the pipeline's internals.
"""

from __future__ import annotations

EXPORT = "check that the final is an export of this render, or rename it after that render"
# (fragment of extract's wording, advice); checked in order, each advice given once.
ADVICE: tuple[tuple[str, str], ...] = (
    ("final unreadable", "replace the kept final in the final folder with a readable copy"),
    ("original unreadable", "replace the kept render in the originals folder with a readable "
                            "copy"),
    ("unreadable renders in the group", "replace the unreadable renders named above in the "
                                        "originals folder"),
    ("not located", "check that the kept final was cut from this render; if it belongs to "
                    "another picture, move it out of the final folder"),
    ("is below min_confidence", "check that the box on the original is where the final was "
                                "cut from (the bar is extract.min_confidence in params.yaml)"),
    ("matches almost as well", "check that the box is on the right one of two similar places "
                               "(how close counts as a tie is extract.ambiguity_margin)"),
    ("could be confirmed at full resolution", "compare the final with the boxed region "
                                              "closely: a retouched final can look like this"),
    ("images of this group are in the final folder", "keep only the image your reviewer chose "
                                                      "in the final folder (the highest stage "
                                                      "was assumed)"),
    ("differ in content", "keep one copy of the final in the final folder and remove the "
                          "others (the latest was assumed)"),
    ("fits this group and", "rename the final after the render it was cut from, so it fits "
                            "one group only"),
    ("matches its content", EXPORT),  # no render matches it beyond doubt
    ("its content best matches", EXPORT),
    ("may be mixed", "check the group's renders: two pictures with the same file names may "
                     "be mixed"),
    ("file time not believable", "check the final's file date (it sets the decision time); "
                                 "the accepted range is scan.earliest_file_time and "
                                 "scan.future_file_time_hours"),
)
GENERAL = "compare the original and the final shown here and fix the files in the folders"


def how_to_resolve(reason: str) -> str:
    """What to check for ``reason``, as one sentence, ending with how to apply the fix."""
    steps = [advice for fragment, advice in ADVICE if fragment in reason]
    steps = list(dict.fromkeys(steps)) or [GENERAL]  # same advice once, in order
    text = "; ".join(steps)
    return f"{text[0].upper()}{text[1:]}, then run dvc repro again."
