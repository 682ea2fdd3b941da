"""The local review page on which people mark generated images good or bad (`mad filter --review`).

`labels` holds the CSV format shared with `mad filter --by labels:`; `server` the HTTP
server; `static/` the page itself (plain HTML, JS and CSS, no external assets).
"""
