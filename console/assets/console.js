// The console's only script (served as /assets/console.js; no inline code: the CSP forbids it).
// A page that names a stream in <body data-live-url> follows it with EventSource: `order`
// messages append to #events and update #order-state and #holder; `attempts` messages (the
// server's rendering of the attempts table after that event) replace #attempts; `feed` messages are put on
// top of #feed; a `failure` message is shown in #error and ends the stream. <body data-live>
// says where the stream stands ("open" once connected).
(function () {
  "use strict";

  function showError(text) {
    var box = document.getElementById("error");
    if (!box) {
      box = document.createElement("div");
      box.id = "error";
      box.setAttribute("role", "alert");
      var h1 = document.querySelector("#main h1");
      if (h1 && h1.parentNode) {
        h1.parentNode.insertBefore(box, h1.nextSibling);
      } else {
        document.body.appendChild(box);
      }
    }
    box.textContent = text;
  }

  function onOrder(ev) {
    var list = document.getElementById("events");
    if (list && !list.querySelector('li.event[data-sequence="' + ev.sequence + '"]')) {
      var item = document.createElement("li");
      item.className = "event";
      item.setAttribute("data-sequence", String(ev.sequence));
      item.textContent = ev.text;
      list.appendChild(item);
    }
    var state = document.getElementById("order-state");
    if (state) {
      state.setAttribute("data-state", ev.state);
      state.textContent = ev.state_text;
    }
    var holder = document.getElementById("holder");
    if (holder && ev.holder !== null && ev.holder !== undefined) {
      holder.textContent = ev.holder;
      holder.hidden = ev.holder === "";
    }
    var slot = document.getElementById("refund-slot");
    if (slot && ev.state === "PAID" && !document.getElementById("refund-link")) {
      var link = document.createElement("a");
      link.id = "refund-link";
      link.href = slot.getAttribute("data-refund-url");
      link.textContent = "Refund this order";
      slot.appendChild(link);
    }
  }

  function onFeed(ev) {
    var list = document.getElementById("feed");
    if (!list || list.querySelector('li.event[data-global-sequence="' + ev.global_sequence + '"]')) {
      return;
    }
    var item = document.createElement("li");
    item.className = "event";
    item.setAttribute("data-global-sequence", String(ev.global_sequence));
    var link = document.createElement("a");
    link.href = "/orders/" + encodeURIComponent(ev.order_id);
    link.textContent = ev.order_id;
    item.appendChild(link);
    item.appendChild(document.createTextNode(" " + ev.text));
    list.insertBefore(item, list.firstChild);
    var keep = parseInt(list.getAttribute("data-keep") || "50", 10);
    while (list.children.length > keep) {
      list.removeChild(list.lastChild);
    }
  }

  function follow() {
    var body = document.body;
    var url = body.getAttribute("data-live-url");
    if (!url || !window.EventSource) {
      return;
    }
    var source = new EventSource(url);
    source.onopen = function () {
      body.setAttribute("data-live", "open");
    };
    source.onerror = function () {
      // The browser reconnects by itself (sending Last-Event-ID) unless the stream is closed.
      body.setAttribute("data-live", source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    };
    source.addEventListener("order", function (message) {
      onOrder(JSON.parse(message.data));
    });
    source.addEventListener("attempts", function (message) {
      var table = document.getElementById("attempts");
      if (!table) {
        return;
      }
      // Parsed inert in a template (nothing in it runs), then put in place of the old table.
      var template = document.createElement("template");
      template.innerHTML = message.data;
      var fresh = template.content.querySelector("table#attempts");
      if (fresh) {
        table.replaceWith(fresh);
      }
    });
    source.addEventListener("feed", function (message) {
      onFeed(JSON.parse(message.data));
    });
    source.addEventListener("failure", function (message) {
      source.close();
      body.setAttribute("data-live", "closed");
      showError(message.data);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", follow);
  } else {
    follow();
  }
})();
