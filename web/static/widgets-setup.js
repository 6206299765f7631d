/*
 * Loaded on pages that show widgets, after require.js (both deferred: `nb_ipywidgets_js` in
 * _config.yml). It fixes two faults of the ipywidgets HTML manager on a Jupyter Book page, each
 * of which puts an error in the reader's console, gives widget images their alt text, and then
 * loads the manager itself (embed-amd.js, 3.6 MB) once the page has been painted, so that the
 * text shows without waiting for it.
 */
(function () {
  "use strict";

  // 1. Each bundle inside embed-amd.js (the manager, @jupyter-widgets/base, .../controls) finds
  //    its icon fonts next to its AMD module, whose URL RequireJS makes from the page's folder
  //    (notebooks/@jupyter-widgets/...): a 404 per font, whenever a view draws an icon. Map
  //    those module paths to the folder that holds embed-amd.js and the fonts.
  var staticRoot = new URL(".", document.currentScript.src).href;
  window.require.config({
    paths: {
      "@jupyter-widgets/html-manager/dist": staticRoot + "jupyter-widgets",
      "@jupyter-widgets": staticRoot + "jupyter-widgets",
    },
  });

  // 2. Widget descriptions are typeset with MathJax 2's MathJax.Hub.Queue, which MathJax 3 (the
  //    one Sphinx loads) does not have: jupyter-widgets/ipywidgets#3829. Provide it on top of
  //    MathJax 3 once the deferred MathJax script has run.
  function provideMathJaxHub() {
    var mathjax = window.MathJax;
    if (!mathjax || mathjax.Hub || !mathjax.startup) {
      return; // no MathJax on this page, or MathJax 2, which has its own Hub
    }
    mathjax.Hub = {
      Queue: function (command) {
        var element = command[2]; // ["Typeset", MathJax.Hub, element]
        mathjax.startup.promise = mathjax.startup.promise.then(function () {
          return mathjax.typesetPromise([element]);
        });
      },
    };
  }

  // 3. An ipywidgets Image has no alt attribute. The book's explorers put the figure's alt text
  //    in the widget's `tooltip`, which ipywidgets 8 renders as the element's `title`: copy it
  //    to `alt` on every widget image, as the manager draws or redraws it.
  function giveAltText(root) {
    var images = root.matches && root.matches("img.widget-image") ? [root] : [];
    if (root.querySelectorAll) {
      images = images.concat(Array.prototype.slice.call(
        root.querySelectorAll("img.widget-image")));
    }
    images.forEach(function (img) {
      if (img.title && img.alt !== img.title) {
        img.alt = img.title;
      }
    });
  }
  new MutationObserver(function (mutations) {
    mutations.forEach(function (mutation) {
      if (mutation.type === "attributes") {
        giveAltText(mutation.target);
      } else {
        mutation.addedNodes.forEach(giveAltText);
      }
    });
  }).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["title"],
  });

  // 4. The manager renders the widgets on the window's load event (or at once if the page has
  //    loaded). Asked for once the browser reports the first paint, its 3.6 MB no longer hold
  //    up the text.
  var requested = false;
  function loadWidgetManager() {
    if (requested) {
      return;
    }
    requested = true;
    var script = document.createElement("script");
    script.src = staticRoot + "jupyter-widgets/embed-amd.js";
    document.head.appendChild(script);
  }

  function afterFirstPaint(callback) {
    if (document.visibilityState === "hidden") {
      callback(); // a background tab paints nothing
      return;
    }
    var types = (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes) || [];
    if (types.indexOf("paint") >= 0) {
      if (performance.getEntriesByType("paint").length) {
        callback(); // painted already, while the page was parsed
        return;
      }
      new PerformanceObserver(function (list, observer) {
        observer.disconnect();
        callback();
      }).observe({ type: "paint", buffered: true });
      window.setTimeout(callback, 5000); // in case no paint is ever reported
    } else {
      // without paint timing: a requestAnimationFrame callback runs just before a frame is
      // painted, and a task queued from it after that paint
      window.requestAnimationFrame(function () {
        window.setTimeout(callback, 0);
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    provideMathJaxHub();
    afterFirstPaint(loadWidgetManager);
  });
})();
