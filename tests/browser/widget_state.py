"""What a page's widgets should render, computed from the widget state the page embeds.

The reference for the browser checks: the state is what the notebook saved, the DOM is what the
ipywidgets HTML manager made of it.
"""

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser

STATE_MIME = "application/vnd.jupyter.widget-state+json"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
# model -> CSS selector of its view in @jupyter-widgets/controls 5 (ipywidgets 8); other models
# (layouts, styles, labels, boxes) are not counted
RENDERED_AS = {
    "IntSliderModel": ".widget-slider",
    "FloatSliderModel": ".widget-slider",
    "FloatLogSliderModel": ".widget-slider",
    "IntRangeSliderModel": ".widget-slider",
    "FloatRangeSliderModel": ".widget-slider",
    "SelectionSliderModel": ".widget-slider",
    "SelectionRangeSliderModel": ".widget-slider",
    "DropdownModel": ".widget-dropdown",
    "ToggleButtonsModel": ".widget-toggle-buttons",
    "ImageModel": "img.widget-image",
    "OutputModel": ".widget-output",
}
SLIDERS = {name for name, selector in RENDERED_AS.items() if selector == ".widget-slider"}
LINKS = {"LinkModel", "DirectionalLinkModel"}  # ipywidgets.jslink / jsdlink


@dataclass(frozen=True)
class Explorer:
    """A slider that picks the visible child of a Stack in the browser (a jslink)."""

    slider_id: str
    stack_id: str
    description: str
    positions: int  # number of slider positions = number of precomputed views


class _Scripts(HTMLParser):
    """Collects the bodies of the widget state and widget view script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.state: dict = {}
        self.views: list[str] = []
        self._type: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._type = dict(attrs).get("type") if tag == "script" else None

    def handle_endtag(self, tag: str) -> None:
        self._type = None

    def handle_data(self, data: str) -> None:
        if self._type == STATE_MIME:
            self.state = json.loads(data)["state"]
        elif self._type == VIEW_MIME:
            self.views.append(json.loads(data)["model_id"])


def page_widgets(html: str) -> tuple[dict, list[str]]:
    """The widget state (model id -> model) and the displayed view model ids of a page."""
    scripts = _Scripts()
    scripts.feed(html)
    return scripts.state, scripts.views


def notebook_state(notebook_json: dict) -> dict:
    """The widget state a notebook saved in its metadata (empty if none)."""
    return notebook_json.get("metadata", {}).get("widgets", {}).get(STATE_MIME, {}).get("state", {})


def _model_id(reference: str) -> str:
    return reference.removeprefix("IPY_MODEL_")


def _visible_models(state: dict, model_id: str) -> Iterator[dict]:
    model = state[model_id]
    yield model
    fields = model["state"]
    children = [_model_id(child) for child in fields.get("children", [])]
    if model["model_name"] == "StackModel":  # a Stack shows only its selected child
        index = fields.get("selected_index")
        children = [] if index is None else [children[index]]
    for child in children:
        yield from _visible_models(state, child)
    for output in fields.get("outputs", []):  # an Output widget may display further widgets
        view = output.get("data", {}).get(VIEW_MIME)
        if view:
            yield from _visible_models(state, view["model_id"])


def expected_views(state: dict, view_ids: list[str]) -> Counter:
    """How many elements of each ``RENDERED_AS`` selector the page's widgets show on load."""
    counts: Counter = Counter()
    for view_id in view_ids:
        for model in _visible_models(state, view_id):
            selector = RENDERED_AS.get(model["model_name"])
            if selector:
                counts[selector] += 1
    return counts


def saved_output_images(state: dict, view_ids: list[str]) -> int:
    """Images that the Output widgets the page shows on load saved (their captured figures).

    An Output model that no displayed view reaches (its cell's output removed from the page,
    say) stays in the saved state but is drawn nowhere, so it is not counted.
    """
    shown = {id(model) for view_id in view_ids for model in _visible_models(state, view_id)}
    return sum(
        1
        for model in state.values()
        if model["model_name"] == "OutputModel" and id(model) in shown
        for output in model["state"].get("outputs", [])
        if "image/png" in output.get("data", {})
    )


def explorers(state: dict) -> list[Explorer]:
    """The slider -> Stack links of a page, from its widget state."""
    found = []
    for model in state.values():
        if model["model_name"] not in LINKS:
            continue
        source, _ = model["state"]["source"]
        target, target_trait = model["state"]["target"]
        slider, stack = state[_model_id(source)], state[_model_id(target)]
        if (
            slider["model_name"] in SLIDERS
            and stack["model_name"] == "StackModel"
            and target_trait == "selected_index"
        ):
            found.append(
                Explorer(
                    slider_id=_model_id(source),
                    stack_id=_model_id(target),
                    description=slider["state"].get("description", ""),
                    positions=len(stack["state"]["children"]),
                )
            )
    return found
