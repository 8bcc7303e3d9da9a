//! Example: a page written in Rust that draws tilewarm items on a canvas, with
//! [`tilewarm_web::TileCache`] as its data layer. Drag or use the arrow keys to pan, the
//! wheel to zoom. Built by `make web-example` into `target/web-canvas/`; serve it with
//! `target/debug/tilewarm-server --www target/web-canvas` and open http://127.0.0.1:8080/.
//!
//! What it shows: `set_viewport` is synchronous (the page draws what is cached at once),
//! fetches run in the background, and the update stream redraws when data arrives.
//! `window.tilewarmCanvas` holds the counters drawn in the status line.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::f64::consts::PI;
use std::rc::Rc;

use futures_util::StreamExt;
use tilewarm_web::{Options, Shown, TileCache, Update, View};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, KeyboardEvent, MouseEvent, WheelEvent};

/// Web Mercator world size in pixels at a zoom.
fn world(zoom: f64) -> f64 {
    256.0 * 2f64.powf(zoom)
}

fn to_px(lon: f64, lat: f64, zoom: f64) -> (f64, f64) {
    let w = world(zoom);
    let s = lat.to_radians().sin().clamp(-0.9999, 0.9999);
    (
        (lon + 180.0) / 360.0 * w,
        (0.5 - ((1.0 + s) / (1.0 - s)).ln() / (4.0 * PI)) * w,
    )
}

fn to_lon_lat(x: f64, y: f64, zoom: f64) -> (f64, f64) {
    let w = world(zoom);
    let lat = (PI * (1.0 - 2.0 * y / w)).sinh().atan().to_degrees();
    (x / w * 360.0 - 180.0, lat.clamp(-85.0, 85.0))
}

struct Map {
    cache: TileCache,
    ctx: CanvasRenderingContext2d,
    canvas: HtmlCanvasElement,
    status: web_sys::Element,
    /// Centre in world pixels at `zoom`.
    cx: f64,
    cy: f64,
    zoom: f64,
    drag: Option<(f64, f64)>,
}

impl Map {
    fn size(&self) -> (f64, f64) {
        (self.canvas.width() as f64, self.canvas.height() as f64)
    }

    /// Tells the cache where the map is and draws what it has.
    fn moved(&mut self) {
        let (w, h) = self.size();
        let (west, north) = to_lon_lat(self.cx - w / 2.0, self.cy - h / 2.0, self.zoom);
        let (east, south) = to_lon_lat(self.cx + w / 2.0, self.cy + h / 2.0, self.zoom);
        match self.cache.set_viewport(west, south, east, north, self.zoom) {
            Ok(view) => self.draw(&view),
            Err(e) => self.status.set_text_content(Some(&e.to_string())),
        }
    }

    fn draw(&self, view: &View<serde_json::Value>) {
        let (w, h) = self.size();
        self.ctx.set_fill_style_str("#111");
        self.ctx.fill_rect(0.0, 0.0, w, h);
        let (ox, oy) = (self.cx - w / 2.0, self.cy - h / 2.0);
        for Shown { item, stale } in &view.items {
            let (x, y) = to_px(item.lon, item.lat, self.zoom);
            let colour = match (item.class.as_str(), stale) {
                (_, true) => "#777",
                ("active", _) => "#4caf50",
                _ => "#42a5f5",
            };
            self.ctx.set_fill_style_str(colour);
            self.ctx.fill_rect(x - ox - 1.5, y - oy - 1.5, 3.0, 3.0);
        }
        let s = self.cache.stats();
        let text = format!(
            "{} items in view{} · {} cached · {} requests ({} prefetch) · zoom {:.1} · drag, arrows, wheel",
            view.items.len(),
            if view.complete { "" } else { " (loading)" },
            s.cache.entries,
            s.batch.requests,
            s.batch.prefetch_requests,
            self.zoom,
        );
        self.status.set_text_content(Some(&text));
        let info = js_sys::Object::new();
        let set = |k: &str, v: f64| {
            let _ = js_sys::Reflect::set(&info, &k.into(), &v.into());
        };
        set("items", view.items.len() as f64);
        set("complete", view.complete as u8 as f64);
        set("entries", s.cache.entries as f64);
        if let Some(win) = web_sys::window() {
            let _ = js_sys::Reflect::set(&win, &"tilewarmCanvas".into(), &info);
        }
    }

    fn pan(&mut self, dx: f64, dy: f64) {
        self.cx += dx;
        self.cy += dy;
        self.moved();
    }

    fn zoom_by(&mut self, dz: f64) {
        let z = (self.zoom + dz).clamp(12.0, 18.0);
        let k = 2f64.powf(z - self.zoom);
        self.cx *= k;
        self.cy *= k;
        self.zoom = z;
        self.moved();
    }
}

fn on<E: JsCast + 'static>(
    target: &web_sys::EventTarget,
    name: &str,
    map: &Rc<RefCell<Map>>,
    f: impl Fn(&mut Map, E) + 'static,
) -> Result<(), JsValue> {
    let map = Rc::clone(map);
    let cb = Closure::<dyn Fn(web_sys::Event)>::new(move |e: web_sys::Event| {
        if let Ok(e) = e.dyn_into::<E>() {
            f(&mut map.borrow_mut(), e);
        }
    });
    target.add_event_listener_with_callback(name, cb.as_ref().unchecked_ref())?;
    cb.forget(); // lives as long as the page
    Ok(())
}

#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    let win = web_sys::window().ok_or("no window")?;
    let doc = win.document().ok_or("no document")?;
    let canvas: HtmlCanvasElement = doc
        .get_element_by_id("map")
        .ok_or("no <canvas id=map>")?
        .dyn_into()?;
    canvas.set_width(canvas.client_width().max(300) as u32);
    canvas.set_height(canvas.client_height().max(200) as u32);
    let ctx: CanvasRenderingContext2d = canvas
        .get_context("2d")?
        .ok_or("no 2d context")?
        .dyn_into()?;
    let status = doc.get_element_by_id("status").ok_or("no #status")?;
    let endpoint = format!("{}/v1/batch", win.location().origin()?);
    let cache: TileCache =
        TileCache::new(&Options::new(endpoint)).map_err(|e| JsValue::from_str(&e.to_string()))?;
    let zoom = 15.0;
    let (cx, cy) = to_px(-122.3321, 47.6062, zoom);
    let map = Rc::new(RefCell::new(Map {
        cache: cache.clone(),
        ctx,
        canvas: canvas.clone(),
        status,
        cx,
        cy,
        zoom,
        drag: None,
    }));
    // Redraw whenever data for the view arrives.
    let weak = Rc::downgrade(&map);
    let mut updates = cache.updates();
    wasm_bindgen_futures::spawn_local(async move {
        while let Some(u) = updates.next().await {
            let Some(map) = weak.upgrade() else { break };
            match u {
                Update::View(view) => map.borrow().draw(&view),
                Update::Error(e) => web_sys::console::warn_1(&e.to_string().into()),
                // The view's items arrive as `View`s; a layer drawing tiles itself would
                // load the tiles `TilesChanged` touches again.
                Update::Complete | Update::Access(_) | Update::TilesChanged(_) => {}
            }
        }
    });
    let c: &web_sys::EventTarget = canvas.as_ref();
    on(c, "mousedown", &map, |m, e: MouseEvent| {
        m.drag = Some((e.client_x() as f64, e.client_y() as f64))
    })?;
    on(c, "mousemove", &map, |m, e: MouseEvent| {
        if let Some((x, y)) = m.drag {
            let (nx, ny) = (e.client_x() as f64, e.client_y() as f64);
            m.drag = Some((nx, ny));
            m.pan(x - nx, y - ny);
        }
    })?;
    on(&win, "mouseup", &map, |m, _: MouseEvent| m.drag = None)?;
    on(c, "wheel", &map, |m, e: WheelEvent| {
        e.prevent_default();
        m.zoom_by(if e.delta_y() > 0.0 { -0.5 } else { 0.5 });
    })?;
    on(&win, "keydown", &map, |m, e: KeyboardEvent| {
        let step = 100.0;
        match e.key().as_str() {
            "ArrowLeft" => m.pan(-step, 0.0),
            "ArrowRight" => m.pan(step, 0.0),
            "ArrowUp" => m.pan(0.0, -step),
            "ArrowDown" => m.pan(0.0, step),
            "+" => m.zoom_by(0.5),
            "-" => m.zoom_by(-0.5),
            _ => {}
        }
    })?;
    map.borrow_mut().moved();
    Ok(())
}
