// The tasks page (issue 6). It holds a JWT from /api/auth/token in memory only (never in storage, so a
// stolen copy of the disk or an extension reading storage finds nothing), refreshes it a minute before it
// expires, and calls the tasks API at /api/{sub}/tasks with it (issue 5). Every failure is shown.
"use strict";

(() => {
  const REFRESH_MARGIN_S = 60;
  const RETRY_REFRESH_MS = 15000;
  const PAGE_SIZE = 50;
  const TITLE_MAX = 200;
  // Newest first: a task added at the top is where it belongs even when more pages follow.
  const SORT = "-created";
  const STATUSES = ["all", "pending", "completed"];
  const EMPTY = {
    all: ["No tasks yet", "Add your first task above and it will show up here."],
    pending: ["Nothing pending", "Every task is done. Enjoy the quiet."],
    completed: ["No completed tasks", "Tasks you tick off will show up here."],
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    email: $("user-email"),
    logout: $("logout"),
    addForm: $("add-form"),
    addTitle: $("new-title"),
    addDue: $("new-due"),
    addButton: document.querySelector('#add-form button[type="submit"]'),
    addError: $("add-error"),
    filters: [...document.querySelectorAll(".segmented button")],
    summary: $("summary"),
    error: $("error"),
    errorText: $("error-text"),
    errorDismiss: $("error-dismiss"),
    errorRetry: $("error-retry"),
    loading: $("loading"),
    list: $("task-list"),
    empty: $("empty"),
    emptyTitle: $("empty-title"),
    emptyText: $("empty-text"),
    more: $("more"),
  };

  // Thrown once the page is navigating to /login: callers stop quietly, there is nothing to show.
  class Leaving extends Error {}

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function toLogin() {
    session = null;
    clearTimeout(refreshTimer);
    location.replace("/login");
    throw new Leaving();
  }

  // ---- The JWT ----------------------------------------------------------------------------------

  let session = null; // {token, sub, email, refreshAt}: refreshAt on this browser's clock
  let refreshing = null;
  let refreshTimer = 0;

  function claimsOf(token) {
    const part = token.split(".")[1] || "";
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  async function fetchToken() {
    let response;
    try {
      response = await fetch("/api/auth/token", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch {
      throw new ApiError(Edge.NETWORK_MESSAGE, 0);
    }
    if (response.status === 401) toLogin();
    if (!response.ok) throw new ApiError(await Edge.errorMessage(response), response.status);
    const { token } = await response.json();
    const claims = claimsOf(token);
    if (session && session.sub !== claims.sub) {
      // Another account signed in from another tab: this page's tasks belong to someone else now.
      location.reload();
      throw new Leaving();
    }
    // Measure the lifetime on the token (exp - iat) and count it from now on our own clock, so a browser
    // whose clock is off neither refreshes in a loop nor too late. Short lifetimes refresh at half-life.
    const lifetime = Math.max(claims.exp - (claims.iat ?? Math.floor(Date.now() / 1000)), 0);
    const refreshIn = Math.max(lifetime > 2 * REFRESH_MARGIN_S ? lifetime - REFRESH_MARGIN_S : lifetime / 2, 5) * 1000;
    session = { token, sub: claims.sub, email: claims.email || "", refreshAt: Date.now() + refreshIn };
    schedule(refreshIn);
    return session;
  }

  function schedule(delay) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      refresh().catch((error) => {
        // Not shown: the next API call refreshes again and reports what goes wrong then.
        if (!(error instanceof Leaving)) schedule(RETRY_REFRESH_MS);
      });
    }, delay);
  }

  // One request at a time, shared by everyone who needs a token meanwhile.
  function refresh() {
    if (!refreshing) refreshing = fetchToken().finally(() => (refreshing = null));
    return refreshing;
  }

  async function currentSession() {
    // Timers sleep in background tabs: check the deadline on every use, not only when the timer fires.
    if (!session || Date.now() >= session.refreshAt) await refresh();
    return session;
  }

  // ---- The tasks API ------------------------------------------------------------------------------

  async function api(method, path, { body, ifMatch, retried = false } = {}) {
    const { token, sub } = await currentSession();
    const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (ifMatch !== undefined) headers["If-Match"] = `"${ifMatch}"`;
    let response;
    try {
      response = await fetch(`/api/${encodeURIComponent(sub)}/tasks${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        // The API authenticates by the bearer token alone; the session cookie has no business there.
        credentials: "omit",
        cache: "no-store",
      });
    } catch {
      throw new ApiError(Edge.NETWORK_MESSAGE, 0);
    }
    if (response.status === 401) {
      // Expired or revoked: one fresh token, one retry; a second refusal means the session is gone.
      if (retried || !session) toLogin();
      session.refreshAt = 0;
      return api(method, path, { body, ifMatch, retried: true });
    }
    if (!response.ok) throw new ApiError(await Edge.errorMessage(response), response.status);
    return response.status === 204 ? null : response.json();
  }

  // ---- State --------------------------------------------------------------------------------------

  let status = STATUSES.includes(new URLSearchParams(location.search).get("status"))
    ? new URLSearchParams(location.search).get("status")
    : "all";
  let tasks = []; // in display order
  let nextCursor = null;
  let loadSeq = 0; // a newer load makes older responses stale
  const rows = new Map(); // task id -> <li>
  const editing = new Set(); // ids whose title is being edited

  function matches(task) {
    return status === "all" || (status === "completed") === task.completed;
  }

  // ---- Errors -------------------------------------------------------------------------------------

  let retryAction = null;

  // `retry`: what "Try again" does, for failures that leave nothing else to click (loading the list).
  function showError(error, context, retry = null) {
    if (error instanceof Leaving) return;
    const message = error instanceof ApiError ? error.message : "Something went wrong. Please reload the page.";
    if (!(error instanceof ApiError)) console.error(error);
    ui.errorText.textContent = context ? `${context}: ${message}` : message;
    retryAction = retry;
    ui.errorRetry.hidden = !retry;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
    retryAction = null;
  }

  ui.errorDismiss.addEventListener("click", clearError);
  ui.errorRetry.addEventListener("click", () => {
    const retry = retryAction;
    clearError();
    if (retry) retry();
  });

  // ---- Rendering ----------------------------------------------------------------------------------

  const dateFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });

  function todayIso() {
    const now = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function createRow(task) {
    const li = element("li", "task");
    li.dataset.id = task.id;
    const check = element("input");
    check.type = "checkbox";
    check.className = "task-check";
    check.dataset.action = "toggle";
    const body = element("div", "task-body");
    const actions = element("div", "task-actions");
    const edit = element("button", "icon-btn");
    edit.type = "button";
    edit.dataset.action = "edit";
    edit.append(element("span", "icon-label", "Edit"));
    const remove = element("button", "icon-btn danger");
    remove.type = "button";
    remove.dataset.action = "delete";
    remove.append(element("span", "icon-label", "Delete"));
    actions.append(edit, remove);
    li.append(check, body, actions);
    return li;
  }

  function fillRow(li, task) {
    li.classList.toggle("is-completed", task.completed);
    const check = li.querySelector(".task-check");
    check.checked = task.completed;
    check.setAttribute("aria-label", `Completed: ${task.title}`);
    li.querySelector('[data-action="edit"]').setAttribute("aria-label", `Edit title of ${task.title}`);
    li.querySelector('[data-action="delete"]').setAttribute("aria-label", `Delete ${task.title}`);
    if (editing.has(task.id)) return; // leave the open editor alone
    const body = li.querySelector(".task-body");
    const title = element("span", "task-title", task.title);
    const parts = [title];
    if (task.description) parts.push(element("p", "task-description", task.description));
    if (task.due_date) {
      const meta = element("div", "task-meta");
      const due = element("span", "task-due", `Due ${dateFormat.format(new Date(`${task.due_date}T00:00:00Z`))}`);
      if (!task.completed && task.due_date < todayIso()) {
        due.classList.add("is-overdue");
        due.textContent += " · overdue";
      }
      meta.append(due);
      parts.push(meta);
    }
    body.replaceChildren(...parts);
  }

  function render() {
    const shown = tasks.filter(matches);
    const keep = new Set(shown.map((task) => task.id));
    for (const [id, li] of rows) {
      if (!keep.has(id)) {
        li.remove();
        rows.delete(id);
        editing.delete(id);
      }
    }
    shown.forEach((task, index) => {
      let li = rows.get(task.id);
      if (!li) {
        li = createRow(task);
        rows.set(task.id, li);
      }
      fillRow(li, task);
      // Move a row only when it is out of place: moving a node would drop the keyboard focus inside it.
      if (ui.list.children[index] !== li) ui.list.insertBefore(li, ui.list.children[index] || null);
    });
    ui.loading.hidden = true;
    ui.list.hidden = shown.length === 0;
    ui.empty.hidden = shown.length > 0;
    [ui.emptyTitle.textContent, ui.emptyText.textContent] = EMPTY[status];
    ui.more.hidden = !nextCursor;
    const pending = shown.filter((task) => !task.completed).length;
    ui.summary.textContent =
      shown.length === 0 ? "" : `${shown.length}${nextCursor ? "+" : ""} shown · ${pending} pending`;
  }

  function setFilter(next) {
    status = next;
    for (const button of ui.filters) button.setAttribute("aria-pressed", String(button.dataset.status === next));
    const url = new URL(location.href);
    if (next === "all") url.searchParams.delete("status");
    else url.searchParams.set("status", next);
    // replaceState: filtering is not navigation, the back button should leave the page.
    history.replaceState(null, "", url);
  }

  // ---- Loading --------------------------------------------------------------------------------------

  async function load({ append = false } = {}) {
    const seq = ++loadSeq;
    const query = new URLSearchParams({ status, sort: SORT, limit: String(PAGE_SIZE) });
    if (append && nextCursor) query.set("cursor", nextCursor);
    if (!append) {
      ui.summary.textContent = "";
      ui.loading.hidden = false;
      ui.list.hidden = true;
      ui.empty.hidden = true;
      ui.more.hidden = true;
    }
    const page = await api("GET", `?${query}`);
    if (seq !== loadSeq) return; // a newer filter or reload won
    tasks = append ? tasks.concat(page.items.filter((t) => !tasks.some((u) => u.id === t.id))) : page.items;
    nextCursor = page.next_cursor;
    render();
  }

  async function reload() {
    try {
      await load();
    } catch (error) {
      ui.loading.hidden = true;
      showError(error, "Could not load your tasks", reload);
    }
  }

  for (const button of ui.filters) {
    button.addEventListener("click", () => {
      if (button.dataset.status === status) return;
      setFilter(button.dataset.status);
      clearError();
      reload();
    });
  }

  ui.more.addEventListener("click", async () => {
    Edge.setBusy(ui.more, true);
    try {
      await load({ append: true });
    } catch (error) {
      showError(error, "Could not load more tasks");
    } finally {
      Edge.setBusy(ui.more, false);
    }
  });

  // ---- Adding -------------------------------------------------------------------------------------

  function showAddError(message) {
    ui.addError.textContent = message;
    ui.addError.hidden = !message;
    ui.addTitle.setAttribute("aria-invalid", String(Boolean(message)));
  }

  ui.addTitle.addEventListener("input", () => {
    if (!ui.addError.hidden && ui.addTitle.value.trim()) showAddError("");
  });

  ui.addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (ui.addButton.disabled) return;
    const title = ui.addTitle.value.trim();
    if (!title) {
      showAddError("Give the task a title.");
      ui.addTitle.focus();
      return;
    }
    if (title.length > TITLE_MAX) {
      showAddError(`Keep the title to ${TITLE_MAX} characters or fewer.`);
      ui.addTitle.focus();
      return;
    }
    showAddError("");
    const body = { title };
    if (ui.addDue.value) body.due_date = ui.addDue.value;
    Edge.setBusy(ui.addButton, true);
    try {
      const task = await api("POST", "", { body });
      tasks = [task, ...tasks.filter((t) => t.id !== task.id)];
      if (!matches(task)) {
        // A new task is pending: show it rather than let it vanish into another filter.
        setFilter("all");
        await load();
      } else {
        render();
      }
      ui.addForm.reset();
      clearError();
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) showAddError(error.message);
      else showError(error, "Could not add the task");
    } finally {
      Edge.setBusy(ui.addButton, false);
      ui.addTitle.focus();
    }
  });

  // ---- Row actions ---------------------------------------------------------------------------------

  function taskOf(li) {
    return tasks.find((task) => task.id === li.dataset.id);
  }

  function replaceTask(updated) {
    tasks = tasks.map((task) => (task.id === updated.id ? updated : task));
  }

  // A busy row ignores clicks instead of disabling its controls: disabling would throw the keyboard focus
  // out of the row and change the Tab order while the request is in flight.
  function setRowBusy(li, busy) {
    li.classList.toggle("is-busy", busy);
    li.setAttribute("aria-busy", String(busy));
  }

  function isBusy(li) {
    return li.getAttribute("aria-busy") === "true";
  }

  // 412: someone changed the task since this page loaded it (If-Match, issue 5). Show the current one.
  async function refetch(task) {
    try {
      replaceTask(await api("GET", `/${encodeURIComponent(task.id)}`));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) tasks = tasks.filter((t) => t.id !== task.id);
      else throw error;
    }
  }

  async function recover(task, error, context) {
    if (error instanceof ApiError && error.status === 412) {
      showError(new ApiError("It was changed somewhere else; this is the latest version.", 412), context);
      await refetch(task).catch((e) => showError(e, context));
    } else if (error instanceof ApiError && error.status === 404) {
      showError(new ApiError("It no longer exists.", 404), context);
      tasks = tasks.filter((t) => t.id !== task.id);
    } else {
      showError(error, context);
    }
  }

  // Runs one write for a row: the row is busy meanwhile, the list is redrawn after, and the keyboard
  // focus stays in the list even when the row goes away (deleted, or filtered out by a toggle).
  async function mutate(li, action, context, work) {
    const task = taskOf(li);
    if (!task) return;
    const focused = li.contains(document.activeElement) ? document.activeElement : null;
    const neighbour = li.nextElementSibling || li.previousElementSibling;
    setRowBusy(li, true);
    try {
      await work(task);
      clearError();
    } catch (error) {
      await recover(task, error, context);
    } finally {
      if (li.isConnected) setRowBusy(li, false);
      render();
    }
    if (li.isConnected) {
      if (focused && focused.isConnected && document.activeElement !== focused) focused.focus();
    } else if (focused) {
      const target = neighbour && neighbour.isConnected && neighbour.querySelector(`[data-action="${action}"]`);
      (target || ui.addTitle).focus();
    }
  }

  function toggle(li) {
    mutate(li, "toggle", "Could not update the task", async (task) => {
      replaceTask(await api("PATCH", `/${encodeURIComponent(task.id)}/complete`, { ifMatch: task.version }));
    });
  }

  function remove(li) {
    mutate(li, "delete", "Could not delete the task", async (task) => {
      await api("DELETE", `/${encodeURIComponent(task.id)}`);
      tasks = tasks.filter((t) => t.id !== task.id);
    });
  }

  function openEditor(li) {
    const task = taskOf(li);
    if (!task || editing.has(task.id)) return;
    editing.add(task.id);
    const form = element("form", "edit-form");
    form.noValidate = true;
    const input = element("input");
    input.type = "text";
    input.value = task.title;
    input.maxLength = TITLE_MAX;
    input.setAttribute("aria-label", "Task title");
    const errorId = `edit-error-${task.id}`;
    input.setAttribute("aria-describedby", errorId);
    const save = element("button", "btn btn-primary btn-small", "Save");
    save.type = "submit";
    save.dataset.busyLabel = "Saving…";
    const cancel = element("button", "btn btn-secondary btn-small", "Cancel");
    cancel.type = "button";
    const problem = element("p", "field-error");
    problem.id = errorId;
    problem.hidden = true;
    form.append(input, save, cancel, problem);
    li.querySelector(".task-body").replaceChildren(form);
    li.querySelector('[data-action="edit"]').hidden = true;
    input.focus();
    input.select();

    const close = (focusEdit = true) => {
      editing.delete(task.id);
      li.querySelector('[data-action="edit"]').hidden = false;
      render();
      if (focusEdit && li.isConnected) li.querySelector('[data-action="edit"]').focus();
    };
    cancel.addEventListener("click", () => close());
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        close();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      const current = taskOf(li) || task;
      if (!title) {
        problem.textContent = "A task needs a title.";
        problem.hidden = false;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      if (title === current.title) {
        close();
        return;
      }
      Edge.setBusy(save, true);
      cancel.disabled = true;
      input.readOnly = true;
      try {
        replaceTask(
          await api("PATCH", `/${encodeURIComponent(current.id)}`, { body: { title }, ifMatch: current.version }),
        );
        clearError();
        close();
      } catch (error) {
        Edge.setBusy(save, false);
        cancel.disabled = false;
        input.readOnly = false;
        if (error instanceof ApiError && error.status === 422) {
          problem.textContent = error.message;
          problem.hidden = false;
          input.setAttribute("aria-invalid", "true");
          input.focus();
        } else if (error instanceof ApiError && (error.status === 412 || error.status === 404)) {
          await recover(current, error, "Could not rename the task");
          close();
        } else {
          showError(error, "Could not rename the task");
        }
      }
    });
  }

  ui.list.addEventListener("change", (event) => {
    if (event.target.dataset.action === "toggle") toggle(event.target.closest(".task"));
  });

  ui.list.addEventListener("click", (event) => {
    const control = event.target.closest("[data-action]");
    if (!control) return;
    const li = control.closest(".task");
    if (isBusy(li)) {
      event.preventDefault(); // for the checkbox: no second toggle while the first is on its way
      return;
    }
    if (control.dataset.action === "edit") openEditor(li);
    else if (control.dataset.action === "delete") remove(li);
  });

  ui.list.addEventListener("dblclick", (event) => {
    const li = event.target.closest(".task");
    if (event.target.classList.contains("task-title") && !isBusy(li)) openEditor(li);
  });

  // ---- Logging out ---------------------------------------------------------------------------------

  ui.logout.addEventListener("click", async () => {
    Edge.setBusy(ui.logout, true);
    let response;
    try {
      // Same-origin fetch: the browser sends Origin, which identity checks on this cookie-carrying POST.
      response = await fetch("/api/auth/sign-out", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: "{}",
      });
    } catch {
      response = null;
    }
    if (response && response.ok) {
      // Forget everything before leaving; replace() keeps this page out of the back button's reach.
      session = null;
      clearTimeout(refreshTimer);
      tasks = [];
      ui.list.replaceChildren();
      location.replace("/login");
      return;
    }
    Edge.setBusy(ui.logout, false);
    showError(new ApiError(response ? await Edge.errorMessage(response) : Edge.NETWORK_MESSAGE, 0), "Could not log out");
  });

  // ---- Start ---------------------------------------------------------------------------------------

  async function start() {
    setFilter(status);
    ui.loading.hidden = false;
    try {
      const { email } = await refresh();
      ui.email.textContent = email;
      ui.email.title = email;
    } catch (error) {
      ui.loading.hidden = true;
      showError(error, "Could not start your session", start);
      return;
    }
    await reload();
  }

  // Restored from the back/forward cache: the session may have ended meanwhile (logged out in this or
  // another tab), so ask again before showing anything.
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    tasks = [];
    nextCursor = null;
    ui.list.replaceChildren();
    rows.clear();
    editing.clear();
    ui.list.hidden = true;
    ui.empty.hidden = true;
    ui.loading.hidden = false;
    session = null;
    start();
  });

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && session && Date.now() >= session.refreshAt) {
      refresh().catch((error) => showError(error, "Could not renew your session"));
    }
  });

  start();
})();
