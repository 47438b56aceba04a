"""The full project's exercises, in course order: references from model/, seeded cases, common mistakes,
and for each exercise with a place in the model the captioner case as its last case."""

from exercises.captioner_case import in_the_captioner
from exercises.decoding_exercises import BEAM, CACHE, FILTERS
from exercises.model_exercises import ATTENTION, BLOCK, HEADS, MASKS, PATCHES, PREFIX
from exercises.plug import PLUGS

EXERCISES = {e.name: e for e in (ATTENTION, MASKS, HEADS, PATCHES, BLOCK, PREFIX, CACHE, FILTERS, BEAM)}
for _name in PLUGS:  # a pass means the captioner works: the last case runs it with the student's code
    _case, _mistakes = in_the_captioner(_name)
    EXERCISES[_name].cases.append(_case)
    EXERCISES[_name].mistakes.extend(_mistakes)
