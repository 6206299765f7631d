/*
 * Loaded on pages that show widgets, after require.js and before the ipywidgets HTML manager
 * (embed-amd.js); configured by `nb_ipywidgets_js` in _config.yml. It fixes two faults of the
 * manager on a Jupyter Book page, each of which puts an error in the reader's console.
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
  document.addEventListener("DOMContentLoaded", function () {
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
  });
})();
