"""The dashboard in Debian's chromium, with jobs published to a real Mosquitto: counts and the chart move live,
a failed job's page shows its error, a hostile job id stays text, the token is required off loopback, and the
page reads with scripts off. The screenshots in docs/dashboard.md are saved by these tests."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Dict

from playwright.async_api import expect

from tests.mqtt.conftest import mosquitto, mqtt_endpoint, probe, start_listener, tls_material
from tests.support.browser import screenshot_path

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = ["mosquitto", "mqtt_endpoint", "probe", "start_listener", "tls_material"]  # the fixtures, for pytest

TOKEN = "browser-dashboard-token-0123"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    if data.get("fail"):
        raise ValueError("the input asked this job to fail")
    return {"ok": True}


async def count(page: "Page", status: str) -> int:
    return int(await page.text_content(f"#count-{status}") or "0")


async def test_counts_chart_and_lists_move_while_jobs_arrive(
        browser_page: "Page", start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    page = browser_page
    listener, _ = await start_listener(processor, http_port=0, qos=1)
    listener._dashboard.sample_interval = 0.5  # the chart gets points within the test's seconds
    await page.goto(f"http://127.0.0.1:{listener.http_port}/")
    assert await count(page, "completed") == 0
    assert await page.text_content("#state") == "running"
    sender = probe()
    for n in range(30):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "b-{n:02d}"')
    sender.publish(f"{unique_topic}/jobs", 'job_id = "b-failed"\nfail = true')
    # Locator assertions poll from Playwright's own script: the page's CSP forbids the eval of wait_for_function.
    await expect(page.locator("#count-completed")).to_have_text("30")
    await expect(page.locator("#count-failed")).to_have_text("1")
    await expect(page.locator("#chart")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
    await expect(page.locator("#chart canvas").first).to_be_visible()
    await expect(page.locator("#jobs-table tbody tr:not(.empty)")).to_have_count(25)
    await expect(page.locator("#failed-table a", has_text="b-failed")).to_have_count(1)
    await expect(page.locator("#page-of")).to_have_text("page 1 of 2")
    await expect(page.locator("#matching")).to_have_text("31")
    await expect(page.locator("#pager a[rel=next]")).to_have_count(1)
    await page.screenshot(path=screenshot_path("dashboard-overview"), full_page=True)

    await page.locator("#failed-table a", has_text="b-failed").click()
    await page.wait_for_selector("#job-error")
    assert await page.text_content("#job-error .error-type") == "ValueError"
    assert "the input asked this job to fail" in (await page.text_content("#job-error .error-message") or "")
    assert await page.text_content("#job-status") == "failed"
    await page.screenshot(path=screenshot_path("dashboard-failed-job"), full_page=True)


async def test_a_hostile_job_id_is_shown_as_text(browser_page: "Page", start_listener: Callable[..., Any], probe: Any,
                                                 unique_topic: str) -> None:
    page = browser_page
    listener, _ = await start_listener(processor, http_port=0, qos=1)
    probe().publish(f"{unique_topic}/jobs", f"job_id = '{HOSTILE}'\nfail = true")
    url = f"http://127.0.0.1:{listener.http_port}/"
    await page.goto(url)
    await expect(page.locator("#count-failed")).to_have_text("1")
    await expect(page.locator("#jobs-table tbody a")).to_have_count(1)  # the live refresh
    await page.goto(url)  # and the server's rendering
    link = page.locator("#jobs-table tbody a")
    assert await link.text_content() == HOSTILE
    await link.click()
    await page.wait_for_selector(".job-id")
    assert await page.text_content(".job-id") == HOSTILE
    assert await page.evaluate("window.pwned === undefined")
    assert await page.locator("#job-error img").count() == 0


async def test_off_loopback_the_token_is_required(browser_page: "Page", start_listener: Callable[..., Any],
                                                  unique_topic: str) -> None:
    page = browser_page
    listener, _ = await start_listener(processor, http_port=0, http_host="0.0.0.0", http_token=TOKEN)
    response = await page.goto(f"http://127.0.0.1:{listener.http_port}/")
    assert response is not None and response.status == 401
    assert await page.locator("#counts").count() == 0
    await page.fill("input[name=token]", "not-the-token-0123456789")
    await page.click("#login button")
    assert await page.locator("#login-failed").count() == 1
    await page.fill("input[name=token]", TOKEN)
    await page.click("#login button")
    await page.wait_for_selector("#counts")
    assert await page.text_content("#state") == "running"


async def test_the_page_reads_with_scripts_off(browser_page: "Page", start_listener: Callable[..., Any], probe: Any,
                                               unique_topic: str) -> None:
    listener, _ = await start_listener(processor, http_port=0, qos=1)
    probe().publish(f"{unique_topic}/jobs", 'job_id = "static-1"')
    browser = browser_page.context.browser
    assert browser is not None
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        url = f"http://127.0.0.1:{listener.http_port}/"
        for _ in range(100):  # the job is done within a few polls; the page itself has no live updates here
            await page.goto(url)
            if await count(page, "completed") == 1:
                break
            await page.wait_for_timeout(100)
        assert await count(page, "completed") == 1
        assert await page.locator("#jobs-table a:text('static-1')").count() == 1
        await page.select_option("select[name=status]", "failed")
        await page.click("#job-filter button")
        await page.wait_for_selector("#jobs-table tr.empty")
        assert "status=failed" in page.url
    finally:
        await context.close()
